"""The one dtype rule: which ``dtype:`` a family can run, and what it runs in on a given device.

Each family's ``Options`` declares three class attributes (read without importing torch):

* ``dtypes``: the ``dtype:`` values it runs; anything else is refused by ``profile validate``
  (:func:`check_dtype`) before a weight loads;
* ``auto_dtype``: what ``dtype: auto`` means for it: ``float32``, ``float16``, ``bfloat16``,
  ``half`` (bfloat16 where the card supports it, else float16) or ``model`` (the checkpoint's own
  dtype, left to transformers / vLLM);
* ``cpu_dtype``: ``float32`` (every dtype runs float32 on CPU: half precision is slow or missing
  there), ``no_float16`` (float16 runs float32, bfloat16 and ``auto`` are kept) or ``as_is``.

Families that run no torch model of their own (``ocr``, ``openai_vlm``, ``isolated``, ``chaos``)
accept every dtype and ignore it (the wrapped expert of ``isolated`` / ``chaos`` has its own).

Usage::

    from natix_miner.experts.dtypes import resolve_dtype, dtype_name, check_dtype
    check_dtype("fp8", "timm")                       # -> "dtype 'fp8' is not supported by family ..."
    dtype_name("auto", "cuda:0", "hf_detector")      # -> "bfloat16" (pure, no torch)
    resolve_dtype("float16", "cpu", "timm")          # -> torch.float32 (torch imported here)
"""

import typing

from natix_miner.config import DTYPES

AUTO_MEANINGS = {"float32": "float32", "float16": "float16 on CUDA", "bfloat16": "bfloat16 on CUDA",
                 "half": "bfloat16 where the card supports it, else float16", "model": "the checkpoint's dtype"}
CPU_RULES = {"float32": "every dtype runs float32", "no_float16": "float16 runs float32", "as_is": "as asked"}


def describe(family: typing.Union[str, type]) -> str:
    """One line: the dtypes a family runs, what ``auto`` means, what runs on CPU."""
    dtypes, auto, cpu = rule(family)
    if tuple(dtypes) == DTYPES:
        return "any (ignored: this family runs no torch model of its own)"
    text = ", ".join(dtypes)
    if "auto" in dtypes:
        text += f"; auto = {AUTO_MEANINGS[auto]}"
    return text + f"; CPU: {CPU_RULES[cpu]}"


class DtypeError(ValueError):
    """A family cannot run the requested dtype; the message lists the ones it can."""


def rule(family: typing.Union[str, type]) -> typing.Tuple[typing.Tuple[str, ...], str, str]:
    """``(dtypes, auto_dtype, cpu_dtype)`` a family (name or Options class) declares; undeclared: every
    dtype, auto = float32, CPU float32."""
    if isinstance(family, str):
        from natix_miner.experts import options_class

        opts = options_class(family)
    else:
        opts = family
    return (tuple(getattr(opts, "dtypes", DTYPES)), getattr(opts, "auto_dtype", "float32"),
            getattr(opts, "cpu_dtype", "float32"))


def check_dtype(spec_dtype: str, family: typing.Union[str, type], name: typing.Optional[str] = None
                ) -> typing.Optional[str]:
    """``None`` when ``family`` (a name, or its Options class with the family ``name``) runs
    ``spec_dtype``, else the problem."""
    dtypes, auto, _ = rule(family)
    if spec_dtype in dtypes:
        return None
    meaning = f"; auto = {AUTO_MEANINGS[auto]}" if "auto" in dtypes else ""
    name = name or (family if isinstance(family, str) else family.__qualname__)
    return f"dtype {spec_dtype!r} is not supported by family {name!r} (use {', '.join(dtypes)}{meaning})"


def dtype_name(spec_dtype: str, device: str, family: typing.Union[str, type]) -> str:
    """The dtype ``family`` runs ``spec_dtype`` in on ``device``: ``float32``/``float16``/``bfloat16``,
    ``auto`` (the checkpoint's own, for ``auto_dtype = "model"``) or ``fp8``/``int8`` when the family
    quantises itself. Raises :class:`DtypeError` for a dtype the family does not run."""
    problem = check_dtype(spec_dtype, family)
    if problem:
        raise DtypeError(problem)
    _, auto, cpu = rule(family)
    on_gpu = str(device).startswith("cuda")
    name = spec_dtype
    if name == "auto":
        if auto == "half":
            name = "bfloat16" if on_gpu and _bf16_supported(device) else "float16"
        elif auto == "model":
            name = "auto"
        else:
            name = auto
    if not on_gpu:
        if cpu == "float32":
            return "float32"
        if cpu == "no_float16" and name == "float16":
            return "float32"
    return name


def _bf16_supported(device: str) -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


def resolve_dtype(spec_dtype: str, device: str, family: typing.Union[str, type]):
    """:func:`dtype_name` as a ``torch.dtype`` (the string ``"auto"`` stays a string: transformers
    reads it as "the checkpoint's dtype")."""
    name = dtype_name(spec_dtype, device, family)
    if name == "auto":
        return "auto"
    import torch

    if name not in ("float32", "float16", "bfloat16"):
        raise DtypeError(f"family {family!r}: dtype {name!r} has no torch dtype (the family quantises)")
    return getattr(torch, name)
