"""The one config loader: typed dataclasses from plain dicts (YAML, JSON, CLI overrides).

Every config in the project -- training recipes, each defense's parameters,
the render config, preprocessing, the bundle manifest, evaluation sweeps and
the attack entries in them -- is a dataclass built by :func:`from_dict`.
Why one loader: a silently ignored typo (``alpah: 1e-4``) trains or reports
the wrong thing for hours, so unknown and ill-typed fields must fail the same
way everywhere, with the dotted path of the field.

Lives in ``edge`` (torch-free, Python 3.8) because the device reads manifests
and preprocessing with it; ``train`` and ``export`` import it from here.
Annotations are resolved with :func:`typing.get_type_hints`, so dataclasses
that a device loads must spell optional types as ``Optional[X]`` (3.8 cannot
evaluate ``X | None``).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Iterable, Mapping, Type, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_UNION_TYPES: tuple = (typing.Union,)
try:  # Python 3.10+: ``X | Y`` annotations
    import types as _types

    _UNION_TYPES = (typing.Union, _types.UnionType)  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover - Python < 3.10
    pass


def _origin(tp: Any) -> Any:
    return getattr(tp, "__origin__", None)


def _args(tp: Any) -> tuple:
    return getattr(tp, "__args__", ()) or ()


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _join(where: str, name: str) -> str:
    """Dotted path of field ``name`` under ``where``; an empty ``where`` is the root (a file's top level)."""
    return "%s.%s" % (where, name) if where else name


def _at(where: str) -> str:
    """Message prefix for ``where`` (nothing at the root: the caller names the file)."""
    return "%s: " % where if where else ""


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp``: ints are accepted where floats are expected, strings
    like ``"1e-4"`` (YAML 1.1 reads them as strings) too; nested dataclasses are built recursively."""
    origin = _origin(tp)
    if tp is Any:
        return value
    if origin in _UNION_TYPES:
        args = _args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error keeps its detail (a nested dataclass's dotted path)
            return coerce(value, options[0], where)
        for arg in options:
            try:
                return coerce(value, arg, where)
            except ConfigError:
                pass
        names = ["null" if a is type(None) else _type_name(a) for a in args]
        raise ConfigError("%s: expected %s, got %r" % (where, " or ".join(names), value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError("%s: expected a number, got %r" % (where, value))
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError("%s: expected an integer, got %r" % (where, value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError("%s: expected true or false, got %r" % (where, value))
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError("%s: expected a string, got %r" % (where, value))
    if tp in (dict, Dict) or origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError("%s: expected a mapping, got %r" % (where, value))
        args = _args(tp)
        if len(args) == 2:
            return {coerce(k, args[0], where): coerce(v, args[1], _join(where, str(k))) for k, v in value.items()}
        return value
    if tp in (list, tuple) or origin in (list, tuple, typing.List, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError("%s: expected a list, got %r" % (where, value))
        args = _args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError("%s: expected %d items, got %d" % (where, len(args), len(value)))
            return tuple(coerce(v, a, "%s[%d]" % (where, i)) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, "%s[%d]" % (where, i)) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin is typing.Literal:
        if value in _args(tp):
            return value
        raise ConfigError("%s: expected one of %s, got %r" % (where, list(_args(tp)), value))
    return value


def from_dict(cls: Type[T], data: Any, where: str, ignore: Iterable[str] = ()) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown and ill-typed fields (``where`` = dotted path).

    Missing fields take the dataclass defaults; a field without a default is required.  The dataclass's own
    ``__post_init__`` then checks values (ranges, choices) and raises :class:`ConfigError` naming the field.
    ``where=""`` is a file's top level: messages then start at the field (``models[0].precision: ...``) and
    the caller adds the file name.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("%sexpected a mapping, got %s" % (_at(where), type(data).__name__))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields) - set(ignore), key=str)
    if unknown:
        raise ConfigError("%sunknown field(s) %s (known: %s)" % (_at(where), unknown, sorted(fields)))
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        raise ConfigError("%smissing field(s) %s" % (_at(where), missing))
    kwargs = {k: coerce(v, hints[k], _join(where, k)) for k, v in data.items() if k in fields}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names the bare field: prefix the path (unless it already has it)
        msg = str(e)
        if not where or any(msg.startswith(where + sep) for sep in (".", ":", "[")):
            raise
        raise ConfigError(_join(where, msg)) from None


def to_dict(obj: Any) -> Dict[str, Any]:
    """A config dataclass as plain JSON-ready data (tuples become lists)."""
    return _plain(dataclasses.asdict(obj))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def check_choice(value: Any, choices: Iterable[Any], field: str) -> None:
    """Raise ``field: expected one of ..., got ...`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError("%s: expected one of %s, got %r" % (field, list(choices), value))


def check_positive_ints(obj: Any, *fields: str) -> None:
    """Raise ``field: expected a positive integer, got ...`` for the first of ``obj``'s ``fields`` below 1 (a bool
    is refused too: ``True`` would pass as 1)."""
    for name in fields:
        value = getattr(obj, name)
        if isinstance(value, bool) or value < 1:
            raise ConfigError("%s: expected a positive integer, got %r" % (name, value))


def check_range(value: float, field: str, lo: Any = None, hi: Any = None, lo_open: bool = False,
                hi_open: bool = False) -> None:
    """Raise ``field: expected a number in [lo, hi], got ...`` when ``value`` is outside the interval."""
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        interval = "%s%s, %s%s" % ("(" if lo_open else "[", "-inf" if lo is None else lo,
                                   "inf" if hi is None else hi, ")" if hi_open else "]")
        raise ConfigError("%s: expected a number in %s, got %r" % (field, interval, value))
