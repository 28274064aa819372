"""The one small interface every model family implements.

An expert loads from a local path or a hub id (offline when ``HF_HUB_OFFLINE=1``), reports its
device and memory, and turns a batch of decoded images into a batch of :class:`Evidence`.
``predict_batch`` is blocking and is always called off the event loop, one batch at a time per
expert (the engine's batcher owns the thread). Async-native experts (vLLM) override
``predict_batch_async`` instead and set ``is_async = True``.

Every family declares its options as a typed ``Options`` (a :class:`~natix_miner.schema.StrictModel`,
one docstring under each field) and the dtypes it runs (``dtypes``, ``auto_dtype``, ``cpu_dtype``:
:mod:`natix_miner.experts.dtypes`); the constructor validates ``spec.options`` into ``self.opts`` and
refuses an unknown key (with the nearest valid name), a wrong type or an unsupported dtype.
``load()`` reads only ``self.opts``.

Usage (writing a family)::

    class Options(ExpertOptions):
        threshold: float = 0.5
        '''Answer 1 above this.'''

    class MyExpert(Expert):
        family = "my_family"
        Options = Options
        def load(self, device):           # heavy work here, never in __init__
            self.model = ...; self.device = device; self.threshold = self.opts.threshold
        def predict_batch(self, images):  # list[DecodedImage] -> list[Evidence]
            return [Evidence(probability=0.7) for _ in images]
"""

import abc
import dataclasses
import math
import typing
from pathlib import Path

import pydantic

from natix_miner.config import DTYPES, ExpertSpec, Profile
from natix_miner.schema import OptionsError, StrictModel, validate_options

if typing.TYPE_CHECKING:  # pragma: no cover
    from natix_miner.imaging.decode import DecodedImage

EPS = 1e-4


@dataclasses.dataclass
class Evidence:
    """One expert's answer for one image.

    ``probability`` is the expert's P(roadwork); ``abstain`` marks "no opinion" (OCR found no
    text, a detector found nothing it trusts) so consensus skips it; ``detail`` carries boxes,
    read text, depth checks, raw logits, for the result and for hard-example mining.
    """

    probability: float
    abstain: bool = False
    detail: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        p = float(self.probability)
        if math.isnan(p):
            self.abstain = True
            p = 0.5
        self.probability = min(1.0 - EPS, max(EPS, p))

    @property
    def logit(self) -> float:
        p = self.probability
        return math.log(p / (1.0 - p))


def validate_spec(model: typing.Type[StrictModel], spec: ExpertSpec
                  ) -> typing.Tuple[typing.Any, typing.List[typing.Tuple[str, str]]]:
    """``(typed options or None, [(key, problem)])`` for ``spec`` against a family's ``Options``:
    its dtype (:func:`~natix_miner.experts.dtypes.check_dtype`) and its options. Builds nothing."""
    from natix_miner.experts.dtypes import check_dtype

    problems = []
    bad_dtype = check_dtype(spec.dtype, model, spec.family)
    if bad_dtype:
        problems.append(("dtype", bad_dtype))
    opts = None
    try:
        opts = validate_options(model, spec.options, spec.family)
    except OptionsError as exc:
        problems += exc.problems
    return opts, problems


class ExpertOptions(StrictModel):
    """What every family's ``Options`` starts from: the keys the engine itself reads from ``options``."""

    require_gpu: bool = False
    """Placement: an expert pinned to ``cuda:N`` fails to start when no GPU is visible, instead of
    running on the CPU with a warning (``natix_miner/engine/placement.py``)."""


class WrapperOptions(ExpertOptions):
    """Families that wrap another expert (``isolated``, ``chaos``): the wrapped expert's entry, checked
    like a profile's (its family, dtype and options). Their own dtype is ignored: the inner entry has one."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = DTYPES

    inner: typing.Dict[str, typing.Any]
    """The wrapped expert: an expert entry without ``name`` (``{family: timm, model: ..., options: {...}}``).
    Required."""

    def plugin_families(self) -> typing.Mapping[str, str]:
        """Families the wrapped expert may use that only the wrapper registers (not checked here)."""
        return {}

    @pydantic.model_validator(mode="after")
    def _inner(self):
        from natix_miner.experts import FAMILIES, spec_problems

        inner = dict(self.inner)
        if "family" not in inner:
            raise ValueError("inner.family is required")
        inner.setdefault("name", "inner")
        try:
            spec = ExpertSpec.model_validate(inner)
        except pydantic.ValidationError as exc:
            raise ValueError("; ".join(f"inner.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        if spec.family in self.plugin_families() and spec.family not in FAMILIES:
            return self
        problems = spec_problems(spec)
        if problems:
            raise ValueError("; ".join(f"inner.{key}: {msg}" for key, msg in problems))
        return self


class Expert(abc.ABC):
    """Base class of all model families (see module docstring)."""

    family: typing.ClassVar[str] = "base"
    is_async: typing.ClassVar[bool] = False
    # the family's typed options; None: a plugin family that declares none reads ``self.options``
    Options: typing.ClassVar[typing.Optional[typing.Type[StrictModel]]] = None

    def __init__(self, spec: ExpertSpec, profile: typing.Optional[Profile] = None):
        self.spec = spec
        self.profile = profile
        self.name = spec.name
        self.device = "cpu"
        self.options = dict(spec.options)  # as written (plugin families without ``Options`` read it)
        self.opts: typing.Any = None
        if self.Options is not None:
            self.opts, problems = validate_spec(self.Options, spec)
            if problems:
                raise OptionsError(spec.family, problems)

    # -- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, device: str) -> None:
        """Build / load the model onto ``device``. Blocking; called once, off the event loop."""

    def warmup(self) -> None:
        """Optional: run a dummy batch so the first real request is not slow."""

    def close(self) -> None:
        """Release resources (GPU memory, engines). The default drops the usual model attributes
        on the caller's thread: freeing tensors later, from a daemon batcher thread at interpreter
        shutdown, can abort the process."""
        for attr in ("_fn", "model", "head", "processor", "_w"):
            if getattr(self, attr, None) is not None:
                setattr(self, attr, None)

    async def start_async(self) -> None:
        """Async experts create their engines inside the running loop here."""

    async def close_async(self) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------
    def predict_batch(self, images: typing.Sequence["DecodedImage"]) -> typing.List[Evidence]:
        raise NotImplementedError(f"{type(self).__name__} implements neither predict_batch nor predict_batch_async")

    async def predict_batch_async(self, images: typing.Sequence["DecodedImage"]) -> typing.List[Evidence]:
        raise NotImplementedError

    # -- reporting -------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Bytes of parameters and buffers (override when the family knows better)."""
        model = getattr(self, "model", None)
        total = 0
        try:
            for t in list(model.parameters()) + list(model.buffers()):  # type: ignore[union-attr]
                total += t.numel() * t.element_size()
        except Exception:
            return 0
        return total

    def resolve_model(self, ref: typing.Optional[str] = None) -> typing.Optional[str]:
        """``spec.model`` (or ``ref``): local path > store name > hub id (offline: cache or a clear
        :class:`~natix_miner.models_store.ModelUnavailable`) > unchanged; see ``natix_miner/models_store.py``."""
        from natix_miner.models_store import resolve_model_ref

        base = Path(self.profile.path).parent if self.profile is not None and self.profile.path else None
        return resolve_model_ref(self.spec.model if ref is None else ref, base=base)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"
