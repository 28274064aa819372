"""One typed configuration tree: a YAML profile (the cascade as data) plus the neuron's flags.

Two halves, both pydantic models validated at start:

* :class:`Profile` - what the engine runs: experts, tiers, escalation band, consensus, cache,
  breakers, deadlines. Lives in ``configs/*.yaml``; fitted consensus weights live beside it in
  ``<profile>.consensus.json``.
* :class:`MinerConfig` - how the neuron runs: chain, wallet, axon, blacklist, ops. Built from
  CLI flags (bittensor style: ``--wallet.name``, ``--axon.port``), environment and the profile's
  optional ``miner:`` section, in that order of precedence, by ``natix_miner.miner.args.build_config``
  (this module imports nothing of ``natix_miner.miner``); it holds the parsed profile (``cascade``).

Usage::

    from natix_miner.config import load_profile, MinerConfig
    profile = load_profile("configs/demo-cpu.yaml")
    profile.tiers[0].experts              # -> ["effnet_lite0"]
    from natix_miner.miner.args import build_config       # flags / env -> MinerConfig (+ the parsed profile)
    cfg = build_config(["--local", "--axon.port", "8091"])
    cfg.cascade                           # the Profile, parsed once

Errors say which key is wrong: ``ProfileError: configs/x.yaml: tiers.0.budget_s: Input should
be greater than 0``.
"""

import json
import math
import re
import typing
from pathlib import Path

import pydantic
import yaml

from natix_miner.schema import StrictModel
from natix_miner.training.recipe import BuildSpec

from natix_miner import resources

# Where profiles live: natix_miner/resources.py (NATIX_ROOT > the checkout > the installed package's copy).
# REPO_ROOT (the shipped files' root), CONFIG_DIR and DEFAULT_PROFILE are read on access, not at import.
_ROOT_NAMES = {"REPO_ROOT": resources.root, "CONFIG_DIR": resources.config_dir,
               "DEFAULT_PROFILE": resources.default_profile}


def __getattr__(name: str):
    if name in _ROOT_NAMES:
        return _ROOT_NAMES[name]()
    raise AttributeError(f"module 'natix_miner.config' has no attribute {name!r}")


class ProfileError(ValueError):
    """A profile file is missing, unreadable or invalid; the message names the key."""


DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:[0-9]+)$"
# an expert's ``dtype:``; which ones a family runs, and what ``auto`` means for it: experts/dtypes.py
Dtype = typing.Literal["float32", "float16", "bfloat16", "fp8", "int8", "auto"]
DTYPES: typing.Tuple[str, ...] = typing.get_args(Dtype)


class ExpertSpec(StrictModel):
    """One expert: a model of one family, on one or more devices, with its own batching.

    ``devices: [cuda:0, cuda:1]`` (or ``replicas: 2`` with ``device: auto``) runs one instance per
    device (data parallel); each request goes to the least-loaded replica. Keys: docs/engine.md.
    """

    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9_.-]+$")
    family: str = pydantic.Field(min_length=1)
    model: typing.Optional[str] = None  # local path (relative to the repo or absolute) or hub id
    device: str = pydantic.Field(default="auto", pattern=DEVICE_PATTERN)  # auto, cpu, cuda, cuda:N
    devices: typing.Optional[typing.List[typing.Annotated[str, pydantic.Field(pattern=DEVICE_PATTERN)]]] = \
        pydantic.Field(default=None, min_length=1, max_length=64)  # one replica per entry
    replicas: int = pydantic.Field(default=1, ge=1, le=64)  # instances when ``devices`` is not given
    dtype: Dtype = "float32"  # what each family runs: natix_miner/experts/dtypes.py, docs/experts.md
    max_batch: int = pydantic.Field(default=16, ge=1, le=4096)
    max_wait_ms: float = pydantic.Field(default=2.0, ge=0, le=1000)
    concurrency: int = pydantic.Field(default=1, ge=1, le=256)  # batches in flight per replica
    timeout_s: typing.Optional[float] = pydantic.Field(default=None, gt=0)
    memory_gb: typing.Optional[float] = pydantic.Field(default=None, gt=0)  # placement hint, per replica
    # the family's typed Options (natix-miner experts options FAMILY), checked when the expert is constructed
    options: typing.Dict[str, typing.Any] = pydantic.Field(default_factory=dict)

    @pydantic.model_validator(mode="after")
    def _replicas(self):
        if self.devices is not None:
            if self.device != "auto":
                raise ValueError(f"expert {self.name!r}: give device or devices, not both")
            if self.replicas not in (1, len(self.devices)):
                raise ValueError(f"expert {self.name!r}: replicas ({self.replicas}) must equal the number of "
                                 f"devices listed ({len(self.devices)})")
        return self

    @property
    def replica_devices(self) -> typing.List[str]:
        """The requested device of every replica (``auto`` / ``cuda`` still to be placed)."""
        return list(self.devices) if self.devices else [self.device] * self.replicas


class EscalationSpec(StrictModel):
    """An image climbs to the next tier only while ``low < p < high``."""

    low: float = pydantic.Field(default=0.2, ge=0, le=1)
    high: float = pydantic.Field(default=0.8, ge=0, le=1)

    @pydantic.model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class TierSpec(StrictModel):
    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9_.-]+$")
    experts: typing.List[str] = pydantic.Field(min_length=1)
    budget_s: float = pydantic.Field(default=1.0, gt=0, le=60)
    min_budget_s: float = pydantic.Field(default=0.0, ge=0, le=60)  # skip the tier with less time left
    escalation: typing.Optional[EscalationSpec] = None  # band after this tier (default: the profile's)


class IsotonicMap(StrictModel):
    """A monotone piecewise-linear map from the pooled logit (before bias) to a probability."""

    x: typing.List[float] = pydantic.Field(min_length=2)
    y: typing.List[float] = pydantic.Field(min_length=2)

    @pydantic.model_validator(mode="after")
    def _shape(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} knots but y has {len(self.y)}")
        if any(b < a for a, b in zip(self.x, self.x[1:])):
            raise ValueError("x must be non-decreasing")
        if any(b < a for a, b in zip(self.y, self.y[1:])) or not all(0.0 <= v <= 1.0 for v in self.y):
            raise ValueError("y must be non-decreasing probabilities in [0, 1]")
        return self


class ConsensusStage(StrictModel):
    """One pooling rule: ``p = sigmoid((bias + sum_i w_i * logit(p_i) [/ sum_i |w_i|]) / temperature)``,
    or, when ``isotonic`` is fitted, ``p = isotonic(sum_i w_i * logit(p_i) [/ sum_i |w_i|])``."""

    weights: typing.Dict[str, float] = pydantic.Field(default_factory=dict)  # absent expert: weight 1
    bias: float = 0.0
    normalize: bool = True  # divide by the weights' sum: the geometric mean of odds when unfitted
    temperature: float = pydantic.Field(default=1.0, gt=0)
    isotonic: typing.Optional[IsotonicMap] = None


class ConsensusSpec(ConsensusStage):
    """Weighted log-odds pooling; ``stages`` (tier name -> rule) overrides it when the cascade stops
    after that tier. Fitted values live in ``<profile>.consensus.json`` (see docs/engine.md)."""

    stages: typing.Dict[str, ConsensusStage] = pydantic.Field(default_factory=dict)


class CacheSpec(StrictModel):
    max_entries: int = pydantic.Field(default=4096, ge=0)
    ttl_s: float = pydantic.Field(default=600.0, gt=0)


class BreakerSpec(StrictModel):
    failures: int = pydantic.Field(default=3, ge=1)
    cooldown_s: float = pydantic.Field(default=30.0, gt=0)
    # probe sooner when the replica has nothing in flight (default: min(1 s, cooldown_s))
    idle_probe_s: typing.Optional[float] = pydantic.Field(default=None, gt=0)


class Profile(StrictModel):
    """The cascade as data (see ``configs/demo-cpu.yaml`` for an annotated example)."""

    name: str
    description: str = ""
    # a demonstration cascade (stand-in model): chain mode refuses it without --allow-demo, and its
    # answers carry a "demo model" caveat in logs and in `natix-miner predict` JSON
    demo: bool = False
    experts: typing.List[ExpertSpec] = pydantic.Field(min_length=1)
    tiers: typing.List[TierSpec] = pydantic.Field(min_length=1)
    escalation: EscalationSpec = pydantic.Field(default_factory=EscalationSpec)
    consensus: ConsensusSpec = pydantic.Field(default_factory=ConsensusSpec)
    cache: CacheSpec = pydantic.Field(default_factory=CacheSpec)
    breaker: BreakerSpec = pydantic.Field(default_factory=BreakerSpec)
    deadline_s: float = pydantic.Field(default=7.0, gt=0, le=9.0)
    fallback_probability: float = pydantic.Field(default=0.49, ge=0, le=1)
    gpu_memory_fraction: float = pydantic.Field(default=0.9, gt=0, le=1)
    max_image_bytes: int = pydantic.Field(default=8 * 1024 * 1024, gt=0)
    max_pixels: int = pydantic.Field(default=4096 * 4096, gt=0)
    miner: typing.Dict[str, typing.Any] = pydantic.Field(default_factory=dict)
    # how `natix-miner build` trains the checkpoints this profile names (natix_miner/training/recipe.py)
    build: BuildSpec = pydantic.Field(default_factory=BuildSpec)
    path: typing.Optional[str] = pydantic.Field(default=None, exclude=True)

    @pydantic.model_validator(mode="after")
    def _references(self):
        names = [e.name for e in self.experts]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"experts: duplicate names {sorted(dup)}")
        tier_names = [t.name for t in self.tiers]
        dup = {n for n in tier_names if tier_names.count(n) > 1}
        if dup:
            raise ValueError(f"tiers: duplicate names {sorted(dup)}")
        seen: typing.Dict[str, str] = {}
        for i, tier in enumerate(self.tiers):
            for name in tier.experts:
                if name not in names:
                    raise ValueError(f"tiers.{i}.experts: unknown expert {name!r} (known: {names})")
                if name in seen:
                    raise ValueError(f"tiers.{i}.experts: expert {name!r} is already in tier {seen[name]!r}")
                seen[name] = tier.name
        for name in self.consensus.weights:
            if name not in names:
                raise ValueError(f"consensus.weights: unknown expert {name!r}")
        for stage, rule in self.consensus.stages.items():
            if stage not in tier_names:
                raise ValueError(f"consensus.stages: unknown tier {stage!r} (tiers: {tier_names})")
            for name in rule.weights:
                if name not in names:
                    raise ValueError(f"consensus.stages.{stage}.weights: unknown expert {name!r}")
        for name in self.build.experts:
            if name not in names:
                raise ValueError(f"build.experts: unknown expert {name!r} (known: {names})")
        return self

    @property
    def tiered_experts(self) -> typing.List[ExpertSpec]:
        """The experts the engine loads: those in a tier. Others are definitions that experts may
        reference (a depth model a detector builds for its size check)."""
        used = {n for t in self.tiers for n in t.experts}
        return [e for e in self.experts if e.name in used]

    def expert(self, name: str) -> ExpertSpec:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)

    def resolve_path(self, value: str) -> str:
        """A model path relative to the shipped files' root (``resources.root()``) if it exists there,
        else as given (hub id)."""
        p = Path(value)
        if not p.is_absolute() and (resources.root() / p).exists():
            return str(resources.root() / p)
        return value

    @property
    def consensus_file(self) -> typing.Optional[Path]:
        if not self.path:
            return None
        p = Path(self.path)
        return p.with_name(p.stem + ".consensus.json")

    def non_finite(self) -> typing.List[str]:
        """``file: key: problem`` for every NaN / infinite number in the profile as it is now.

        Loading refuses them already; this catches a profile changed in code after validation
        (the engine calls it at start). Fitted keys are reported against ``<profile>.consensus.json``
        when that file exists."""
        fitted = self.consensus_file
        fitted = str(fitted) if fitted is not None and fitted.exists() else None
        where = self.path or self.name
        out = []
        for key, value in _numbers(self.model_dump(exclude={"miner", "path"}, round_trip=True)):
            if not math.isfinite(value):
                top, _, rest = key.partition(".")
                if top == "consensus" and fitted and rest.split(".")[0] in FITTED_KEYS:
                    out.append(f"{fitted}: {rest}: must be a finite number, got {value}")
                else:
                    out.append(f"{where}: {key}: must be a finite number, got {value}")
        return out


def _numbers(obj: typing.Any, prefix: str = "") -> typing.Iterator[typing.Tuple[str, float]]:
    """Every float in a dumped model, with its dotted key (``consensus.stages.t0.bias``)."""
    if isinstance(obj, float):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{prefix}.{i}" if prefix else str(i))


def _format_error(path: str, err: pydantic.ValidationError, data: typing.Any = None) -> str:
    """One ``file: key.path: problem`` line per error; list items of experts/tiers also name the item."""
    lines = []
    for e in err.errors():
        parts = [str(x) for x in e["loc"]]
        if len(parts) >= 2 and parts[0] in ("experts", "tiers") and isinstance(data, dict):
            try:
                item = data[parts[0]][int(parts[1])]
                if isinstance(item, dict) and item.get("name"):
                    parts[1] = f"{parts[1]}({item['name']})"
            except (KeyError, IndexError, TypeError, ValueError):
                pass
        loc = ".".join(parts) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {loc}: {msg}")
    return "\n".join(lines)


FITTED_KEYS = ("weights", "bias", "normalize", "temperature", "isotonic", "stages")


def _fitted_consensus(fitted: Path, data: dict) -> dict:
    """Read ``<profile>.consensus.json`` and return the merged ``consensus`` section.

    Format (written by the training pipeline): ``{"weights": {expert: w}, "bias": b,
    "normalize": false, "temperature": 1.0, "stages": {tier: {...same keys...}}, ...metadata}``.
    Unknown top-level keys are metadata and ignored; ``normalize`` defaults to false here.
    """
    try:
        fit = json.loads(fitted.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{fitted}: not valid JSON: {exc}") from exc
    if not isinstance(fit, dict):
        raise ProfileError(f"{fitted}: top level must be an object")
    cons = {"normalize": False, **{k: v for k, v in fit.items() if k in FITTED_KEYS}}
    try:
        spec = ConsensusSpec.model_validate(cons)
    except pydantic.ValidationError as exc:
        raise ProfileError(_format_error(str(fitted), exc)) from None
    names = {e.get("name") for e in data.get("experts") or [] if isinstance(e, dict)}
    for where, weights in [("weights", spec.weights)] + [
            (f"stages.{k}.weights", v.weights) for k, v in spec.stages.items()]:
        unknown = sorted(set(weights) - names)
        if unknown:
            raise ProfileError(f"{fitted}: {where}: experts not in the profile: {unknown}")
    merged = dict(data.get("consensus") or {})
    merged.update(cons)
    return merged


def resolve_profile_path(name_or_path: typing.Union[str, Path, None]) -> Path:
    """``None`` -> the embedded default; ``h100x2`` -> ``configs/h100x2.yaml`` (of ``resources.root()``:
    ``$NATIX_ROOT``, the checkout or the installed package); else a path."""
    try:
        config_dir = resources.config_dir()
    except resources.RootError as exc:
        raise ProfileError(str(exc)) from None
    if name_or_path is None:
        return config_dir / "demo-cpu.yaml"
    p = Path(name_or_path)
    if p.exists():
        return p
    cand = config_dir / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    known = ", ".join(sorted(x.stem for x in config_dir.glob("*.yaml"))) or "none"
    raise ProfileError(f"profile not found: {name_or_path} (looked at {p} and {cand}); profiles in "
                       f"{config_dir}: {known}")


def load_profile(name_or_path: typing.Union[str, Path, None] = None,
                 stand_ins: typing.Union[str, Path, bool, None] = None,
                 device: typing.Union[str, bool, None] = None, fitted: bool = True) -> Profile:
    """Load and validate a profile; fitted consensus weights beside it override the YAML's
    (``fitted=False``: the YAML's own, e.g. to rebuild a profile whose tiers changed since the fit).

    ``stand_ins`` (default: ``$NATIX_STAND_INS``): a directory written by ``natix-miner models stand-in``;
    every expert then loads its stand-in. ``device`` (default: ``$NATIX_DEVICE``): every expert and
    replica on that device (``cpu`` also runs the ``vllm`` family through ``hf_vlm``); ``False``: neither,
    whatever the environment says. See :mod:`natix_miner.standins`."""
    path = resolve_profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: top level must be a mapping")
    data["path"] = str(path)
    fit_path = path.with_name(path.stem + ".consensus.json")
    if fitted and fit_path.exists():
        data["consensus"] = _fitted_consensus(fit_path, data)
    from natix_miner import envs

    stand_ins = envs.get("NATIX_STAND_INS") if stand_ins is None else stand_ins  # False: as written
    device = envs.get("NATIX_DEVICE") if device is None else device
    if stand_ins or device:
        from natix_miner.standins import StandInError, apply_data

        if device and not re.match(DEVICE_PATTERN, device):
            raise ProfileError(f"device {device!r}: expected cpu, cuda or cuda:N")
        try:
            data = apply_data(data, stand_ins, device)
        except StandInError as exc:
            raise ProfileError(str(exc)) from None
    try:
        return Profile.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ProfileError(_format_error(str(path), exc, data)) from None


# ----------------------------------------------------------------------------------------------
# The neuron's configuration


class ChainConfig(StrictModel):
    netuid: int = 72
    network: str = "finney"
    chain_endpoint: typing.Optional[str] = None


class WalletConfig(StrictModel):
    name: str = "default"
    hotkey: str = "default"
    path: str = "~/.bittensor/wallets"


class AxonConfig(StrictModel):
    ip: str = "0.0.0.0"
    port: int = pydantic.Field(default=8091, ge=0, le=65535)
    external_ip: typing.Optional[str] = None
    external_port: typing.Optional[int] = None
    max_workers: int = pydantic.Field(default=16, ge=1)
    max_body_bytes: int = pydantic.Field(default=16 * 1024 * 1024, gt=0)
    max_inflight: int = pydantic.Field(default=32, ge=1)  # requests inside the engine (miner/admission.py)
    max_waiting: int = pydantic.Field(default=128, ge=0)  # queued by stake; beyond: fallback answer at once
    max_connections: int = pydantic.Field(default=512, ge=1)  # open HTTP connections; beyond: 503
    header_timeout_s: float = pydantic.Field(default=10.0, gt=0)  # a request's headers must arrive in time
    body_timeout_s: float = pydantic.Field(default=10.0, gt=0)  # ...and its body within this after the head
    max_connections_per_peer: int = pydantic.Field(default=32, ge=1)  # unverified connections per address
    reserved_connections: int = pydantic.Field(default=64, ge=0)  # of max_connections (at most 1/4), verified callers only
    max_requests_per_hotkey: int = pydantic.Field(default=32, ge=1)  # requests of one hotkey at once
    nonce_window_s: float = pydantic.Field(default=30.0, gt=0)  # replay window, never widened by headers
    state_dir: typing.Optional[str] = None  # replay nonces (0600); default: natix-state/ in the wallet dir


class BlacklistConfig(StrictModel):
    force_validator_permit: bool = True
    allow_non_registered: bool = False
    min_stake: float = 0.0
    allowed_hotkeys: typing.List[str] = pydantic.Field(default_factory=list)  # local mode admits these


class VaultConfig(StrictModel):
    addr: typing.Optional[str] = None
    token: typing.Optional[str] = pydantic.Field(default=None, repr=False)
    path: typing.Optional[str] = None  # KV v2 path, e.g. "natix/miner-hotkey"
    mount: str = "secret"
    role_id: typing.Optional[str] = pydantic.Field(default=None, repr=False)
    secret_id: typing.Optional[str] = pydantic.Field(default=None, repr=False)
    namespace: typing.Optional[str] = None
    timeout_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.path)


class MetricsConfig(StrictModel):
    port: int = pydantic.Field(default=9100, ge=0, le=65535)
    host: str = "127.0.0.1"  # loopback only unless --metrics.host says otherwise
    enabled: bool = True


class TracingConfig(StrictModel):
    endpoint: typing.Optional[str] = None  # OTLP/HTTP endpoint; off when None
    service_name: str = "natix-miner"


class LoggingConfig(StrictModel):
    level: str = "INFO"
    dir: typing.Optional[str] = None
    rotation: str = "100 MB"
    retention: str = "14 days"
    json_logs: bool = False


class EngineConfig(StrictModel):
    """Where the cascade runs: in this process (default) or a Ray Serve application (docs/scaling.md)."""

    ray: typing.Optional[str] = None
    """Ray cluster address (``HOST:PORT`` of a cluster this box is a node of, ``auto``, or
    ``ray://HOST:10001``): answer through the app ``natix-miner engine serve`` deployed, load no model."""
    app: str = pydantic.Field(default="natix", min_length=1)
    """The Ray Serve application name (``natix-miner engine serve --app``)."""
    connect_timeout_s: float = pydantic.Field(default=60.0, gt=0)
    """How long the start waits for the application's first answer before it fails (exit 7)."""
    stale_after_s: float = pydantic.Field(default=5.0, gt=0)
    """No status from the cluster for this long: it counts as lost (fallback answers, reconnecting)."""


class MinerConfig(StrictModel):
    """Everything the neuron needs; ``profile`` names the cascade."""

    profile: str = "demo-cpu"  # a name in configs/ or a path; build_config stores the resolved path
    local: bool = False
    allow_demo: bool = False  # chain mode with a demo profile (Profile.demo) is refused without it
    allow_degraded: bool = False  # serve when a tier has no loadable expert (refused without it)
    allow_downloads: bool = False  # models may download from their hub (offline without it)
    local_metagraph: typing.Optional[str] = None  # YAML/JSON list of {hotkey, stake, validator_permit}
    hotkeys: typing.Optional[str] = None
    """YAML file listing several hotkeys served by this one process, one axon each, one shared engine
    (``natix_miner.miner.hotkeys``); when set, each entry's wallet, port and Vault path replace
    ``wallet.name`` / ``wallet.hotkey`` / ``axon.port`` / ``vault.path``."""
    model_url: str = ""
    sync_interval_s: float = 600.0
    chain: ChainConfig = pydantic.Field(default_factory=ChainConfig)
    wallet: WalletConfig = pydantic.Field(default_factory=WalletConfig)
    axon: AxonConfig = pydantic.Field(default_factory=AxonConfig)
    blacklist: BlacklistConfig = pydantic.Field(default_factory=BlacklistConfig)
    vault: VaultConfig = pydantic.Field(default_factory=VaultConfig)
    metrics: MetricsConfig = pydantic.Field(default_factory=MetricsConfig)
    tracing: TracingConfig = pydantic.Field(default_factory=TracingConfig)
    logging: LoggingConfig = pydantic.Field(default_factory=LoggingConfig)
    engine: EngineConfig = pydantic.Field(default_factory=EngineConfig)

    cascade: typing.Optional[Profile] = pydantic.Field(default=None, exclude=True, repr=False)
    """The parsed :attr:`profile`: ``natix_miner.miner.args.build_config`` parses it once (its ``miner:``
    section is merged below the flags) and keeps it here; the neuron and the engine use this object and
    never read the file again. ``None`` only for a config built by hand: :meth:`load_cascade` fills it."""

    def load_cascade(self) -> Profile:
        """The parsed profile: :attr:`cascade`, loaded from :attr:`profile` (once) when unset."""
        if self.cascade is None:
            self.cascade = load_profile(self.profile)
        return self.cascade
