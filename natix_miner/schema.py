"""The one base of every typed setting in the product, and the errors it gives operators.

``StrictModel`` refuses unknown keys and NaN / infinite numbers. :func:`validate_options` turns a
family's raw ``options`` mapping into its typed ``Options`` with messages that name the key, suggest
the nearest valid name (as Ultralytics' ``check_dict_alignment`` does) and list the valid ones::

    options.nonsense_key: 'nonsense_key' is not an option of family 'timm'. Valid: bucket_batches, ...
    options.decod: 'decod' is not an option of family 'timm'. Did you mean 'decode'? Valid: ...
    options.decode: Input should be 'gpu', 'cpu' or 'hw' (got 'bogus')

Usage::

    from natix_miner.schema import StrictModel, validate_options
    class Options(StrictModel):
        decode: typing.Literal["gpu", "cpu", "hw"] = "gpu"
        \"\"\"Where the bulk path decodes JPEGs.\"\"\"
    opts = validate_options(Options, {"decode": "cpu"}, family="timm")   # or raises OptionsError

Imports only pydantic (no torch, no model libraries).
"""

import difflib
import re
import typing

import pydantic


class StrictModel(pydantic.BaseModel):
    """Unknown keys and NaN / Infinity are refused (a NaN consensus weight once made every answer
    0.49); every field documents itself with a docstring under it (``use_attribute_docstrings``)."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)


class OptionsError(ValueError):
    """An expert's ``options`` (or its ``dtype``) are invalid for its family. ``problems``:
    ``[(key, message)]`` with keys relative to the expert entry (``options.decode``, ``dtype``)."""

    def __init__(self, family: str, problems: typing.Sequence[typing.Tuple[str, str]]):
        self.family = family
        self.problems = list(problems)
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in self.problems))


def nearest(name: str, valid: typing.Iterable[str]) -> typing.Optional[str]:
    """The valid name closest to ``name`` (difflib ratio >= 0.6), or None."""
    hits = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return hits[0] if hits else None


def _model_in(annotation: typing.Any) -> typing.Optional[typing.Type[pydantic.BaseModel]]:
    """The pydantic model inside ``annotation`` (``Model``, ``Optional[Model]``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def model_at(model: typing.Type[pydantic.BaseModel], loc: typing.Sequence[typing.Any]
             ) -> typing.Optional[typing.Type[pydantic.BaseModel]]:
    """The (nested) model that holds the key at ``loc`` (``("thinking", "mode")`` -> ThinkingOptions)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return model


def _problem(model: typing.Type[pydantic.BaseModel], err: dict, family: str) -> typing.Tuple[str, str]:
    loc = [str(x) for x in err["loc"]]
    key = ".".join(["options"] + loc)
    if err["type"] == "extra_forbidden":
        holder = model_at(model, loc[:-1])
        valid = sorted(holder.model_fields) if holder is not None else []
        where = f"family {family!r}" if len(loc) == 1 else f"{'.'.join(loc[:-1])} (family {family!r})"
        msg = f"{loc[-1]!r} is not an option of {where}."
        guess = nearest(loc[-1], valid)
        if guess:
            msg += f" Did you mean {guess!r}?"
        if valid:
            msg += f" Valid: {', '.join(valid)}"
        return key, msg
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("missing",):
        shown = repr(err["input"])
        msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return key, msg


_UNION_TAG = re.compile(r"^(str|int|float|bool|bytes|none|[a-z_-]+\[.*\])$")


def _merge_union_members(problems: typing.List[typing.Tuple[str, str]]) -> typing.List[typing.Tuple[str, str]]:
    """pydantic reports a union once per member (``positive_label.str``, ``positive_label.list[str]``):
    one line per key instead (``positive_label: Input should be a valid string, or a valid list (got 5)``)."""
    merged: typing.Dict[str, typing.List[str]] = {}
    for key, msg in problems:
        parts = key.split(".")
        while len(parts) > 1 and _UNION_TAG.match(parts[-1]):
            parts.pop()
        merged.setdefault(".".join(parts), []).append(msg)
    out = []
    for key, msgs in merged.items():
        if len(msgs) == 1:
            out.append((key, msgs[0]))
            continue
        got = re.search(r" \(got .*\)$", msgs[-1])
        bare = [re.sub(r" \(got .*\)$", "", m) for m in msgs]
        text = bare[0] + "".join(", or " + m.removeprefix("Input should be ") for m in bare[1:])
        out.append((key, text + (got.group(0) if got else "")))
    return out


def validate_options(model: typing.Type[pydantic.BaseModel], options: typing.Optional[typing.Mapping[str, typing.Any]],
                     family: str) -> typing.Any:
    """``model.model_validate(options)``; a failure raises :class:`OptionsError` naming every key."""
    try:
        return model.model_validate(dict(options or {}))
    except pydantic.ValidationError as exc:
        raise OptionsError(family, _merge_union_members([_problem(model, e, family) for e in exc.errors()])) from None


def type_name(annotation: typing.Any) -> str:
    """A short, readable type (``Literal['gpu', 'cpu']`` -> ``gpu | cpu``; ``Optional[int]`` -> ``int | None``)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is typing.Union:
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (list, typing.List):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin in (tuple, typing.Tuple):
        return f"tuple[{', '.join(type_name(a) for a in args)}]" if args else "tuple"
    if origin in (dict, typing.Dict):
        return f"dict[{type_name(args[0])}, {type_name(args[1])}]" if args else "dict"
    if annotation is type(None):
        return "None"
    if annotation is typing.Any:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def schema_rows(model: typing.Type[pydantic.BaseModel], prefix: str = "") -> typing.List[typing.Dict[str, str]]:
    """``[{"key", "type", "default", "doc"}]`` for every field, nested models flattened (``thinking.mode``)."""
    rows = []
    for name, field in model.model_fields.items():
        sub = _model_in(field.annotation)
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = repr(field.default_factory())
        else:
            default = repr(field.default)
        doc = " ".join((field.description or "").split())
        if sub is not None:  # a section: its own row, then its keys (``engine.max_model_len``)
            shown = "required" if field.is_required() else "(below)" if field.default_factory else default
            rows.append({"key": prefix + name, "type": type_name(field.annotation), "default": shown, "doc": doc})
            rows += schema_rows(sub, prefix=f"{prefix}{name}.")
            continue
        rows.append({"key": prefix + name, "type": type_name(field.annotation), "default": default, "doc": doc})
    return rows
