"""The recipe's dataclasses validated by Pydantic v2: types, nesting, unknown and required keys, ranges, and the
one-line error each failure becomes.

The schema stays plain dataclasses (`sft/recipe.py`: a field's type, default and `help`, and its `min` / `max` /
`exclusive_min` / `nonempty` checks); `validator(Recipe)` gives them to Pydantic as they are, with each field's type
mapped to Pydantic's strict type plus the few readings a YAML recipe needs, declared here once:
- a whole float is an integer (`batch_size: 8.0`); a number is text where text is expected (`revision: 2024`);
- text that is a number is a float (YAML 1.1 reads `1e-4`, without a dot, as text);
- a single item where a list is expected is a one-item list (`report_to: none`, `sources: {path: ...}`);
- YAML 1.1's bare `no` (read as false) is the choice "no" where a field offers it (`mixed_precision: no`).
Anything else of the wrong type is refused (`packing: "yes"`, `batch_size: "8"`, `epochs: true`)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from functools import lru_cache
from typing import Annotated, Any, Literal

from .errors import RecipeError


def _whole(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _number_text(v):
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _as_text(v):
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _no(v):
    return "no" if v is False else v


def _one_item(item_type):
    single = dict if dataclasses.is_dataclass(item_type) else str
    return lambda v: [v] if isinstance(v, single) else v


def _nonempty(v):
    from pydantic_core import PydanticCustomError

    if isinstance(v, str) and not v.strip():
        raise PydanticCustomError("nonempty", "is empty")
    return v


def _pydantic_type(tp: Any, meta: dict | None = None) -> Any:
    """A field's declared type as Pydantic validates it (strict, with the readings above and the field's checks)."""
    from annotated_types import Ge, Gt, Le
    from pydantic import AfterValidator, BeforeValidator, Strict

    meta = meta or {}
    bounds = []
    if meta.get("min") is not None:
        bounds.append(Gt(meta["min"]) if meta.get("exclusive_min") else Ge(meta["min"]))
    if meta.get("max") is not None:
        bounds.append(Le(meta["max"]))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return Annotated[bool, Strict()]
    if tp is int:
        return Annotated[int, Strict(), BeforeValidator(_whole), *bounds]
    if tp is float:
        from pydantic import AllowInfNan

        return Annotated[float, Strict(), AllowInfNan(False), BeforeValidator(_number_text), *bounds]
    if tp is str:
        checks = [AfterValidator(_nonempty)] if meta.get("nonempty") else []
        return Annotated[str, Strict(), BeforeValidator(_as_text), *checks]
    if origin is Literal:
        return Annotated[tp, BeforeValidator(_no)] if "no" in args else tp
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_pydantic_type(a, meta) if a is not type(None) else a for a in args)]
    if origin is list:
        return Annotated[list[_pydantic_type(args[0])], BeforeValidator(_one_item(args[0]))]
    if origin is dict:
        return dict[_pydantic_type(args[0]), _pydantic_type(args[1])]
    if tp is dict:
        return Annotated[dict, Strict()]
    return tp  # a nested dataclass: prepared by _prepare


def _prepare(cls: type) -> None:
    """Give Pydantic the dataclass's fields in its types (once, on the dataclass fields' `type`, which Pydantic
    reads; `typing.get_type_hints` still gives the declared ones) and forbid unknown keys."""
    from pydantic import ConfigDict

    if "__pydantic_config__" in cls.__dict__:
        return
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        f.type = _pydantic_type(tp, dict(f.metadata))  # what Pydantic reads; get_type_hints keeps the declared type
        for inner in [tp, *typing.get_args(tp)]:
            if dataclasses.is_dataclass(inner):
                _prepare(inner)
    cls.__pydantic_config__ = ConfigDict(extra="forbid")


@lru_cache(maxsize=None)
def validator(cls: type):
    """The Pydantic TypeAdapter of a schema dataclass (built once, on first use)."""
    from pydantic import TypeAdapter

    _prepare(cls)
    return TypeAdapter(cls)


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping whose values are each {type_name(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    """A schema dataclass's recipe keys (not its internal fields)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")}


def _walk(cls: type, loc: tuple) -> tuple[list[str], Any, dataclasses.Field | None, type | None]:
    """Follow an error location through the schema: the dotted path, the declared type there, its field and the
    dataclass holding it (union members and validator names that Pydantic adds to a location are skipped)."""
    path: list[str] = []
    tp: Any = cls
    fld = owner = None
    for part in loc:
        while typing.get_origin(tp) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                break
            tp = members[0]
        if dataclasses.is_dataclass(tp):
            fields = fields_of(tp)
            path.append(str(part))
            if part not in fields:
                return path, None, None, tp
            owner, fld = tp, fields[part]
            tp = typing.get_type_hints(tp)[part]
        elif typing.get_origin(tp) is list and isinstance(part, int):
            path.append(str(part))
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict and isinstance(part, str):
            path.append(part)
            tp = typing.get_args(tp)[1]
        else:
            break  # a union member tag or a validator name: the path ends at the field
    return path, tp, fld, owner


def validate(cls: type, data: dict, file: str) -> Any:
    """`data` as an instance of the schema dataclass `cls`, or a RecipeError naming the file, the field and the fix
    (the first problem Pydantic finds, in the schema's field order)."""
    from pydantic import ValidationError

    try:
        return validator(cls).validate_python(data)
    except ValidationError as e:
        err = _first(e.errors(), lambda loc: _walk(cls, loc)[0])
        path, tp, fld, owner = _walk(cls, err["loc"])
        raise _error(".".join(path), tp, fld, owner, err, file) from None


_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
_MISSING = ("missing", "missing_argument")
_WRONG_TYPE = ("_type", "_parsing")  # endings of Pydantic's type errors


def _first(errors: list[dict], key_of) -> dict:
    """The error to report: an unknown key before anything else (a misspelt required key is a typo, not a missing
    value), a missing key last; of a union's errors at one key (one per member; `key_of` maps a location to its
    recipe key), a range or finite-number error over a type error (`warmup_steps: -1.5` is out of range, not of the
    wrong type)."""
    def rank(item):
        i, err = item
        return (0 if err["type"] in _UNKNOWN else 2 if err["type"] in _MISSING else 1, i)

    _, err = min(enumerate(errors), key=rank)
    if err["type"].endswith(_WRONG_TYPE):
        key = key_of(err["loc"])
        return next((o for o in errors if not o["type"].endswith(_WRONG_TYPE) and key_of(o["loc"]) == key), err)
    return err


def check_value(cls: type, name: str, value: Any, label: str, file: str | None) -> Any:
    """A value given outside a recipe (a command-line flag) validated as field `name` of `cls` is."""
    from pydantic import TypeAdapter, ValidationError

    fld, tp = fields_of(cls)[name], typing.get_type_hints(cls)[name]
    try:
        return TypeAdapter(_pydantic_type(tp, dict(fld.metadata))).validate_python(value)
    except ValidationError as e:
        raise _error(label, tp, fld, cls, _first(e.errors(), lambda loc: ()), file) from None


def _error(where: str, tp: Any, fld, owner, err: dict, file: str | None) -> RecipeError:
    kind, value = err["type"], err.get("input")
    if kind in _UNKNOWN or (tp is None and owner is not None):
        prefix, _, key = where.rpartition(".")
        names = list(fields_of(owner))
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
        fix = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else \
            f"valid keys: {', '.join(names)}"
        return RecipeError("unknown key", file=file, field=where, fix=fix)
    required = fld is not None and fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING
    if kind in _MISSING or (value is None and required):
        return RecipeError("is required", file=file, field=where)
    if kind == "nonempty":
        return RecipeError("is empty", file=file, field=where, fix="give a value")
    if kind == "finite_number":
        return RecipeError(f"got {value!r}, expected a finite number", file=file, field=where)
    meta = dict(fld.metadata) if fld is not None else {}
    if kind in ("greater_than", "greater_than_equal", "less_than_equal"):
        lo, hi = meta.get("min"), meta.get("max")
        if kind == "less_than_equal":
            return RecipeError(f"got {value!r}, expected a value <= {hi}", file=file, field=where)
        op = ">" if meta.get("exclusive_min") else ">="
        return RecipeError(f"got {value!r}, expected a value {op} {lo}" + (f" and <= {hi}" if hi is not None else ""),
                           file=file, field=where)
    fix = None
    if typing.get_origin(tp) is Literal:
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        fix = f"did you mean {close[0]!r}?" if close else None
    return RecipeError(f"got {value!r}, expected {type_name(tp)}", file=file, field=where, fix=fix)
