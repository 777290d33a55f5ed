"""The one config parser: a mapping from a yaml section -> a typed config dataclass.

Every component owns its options as a dataclass (field types, defaults, docstrings, range
checks in ``__post_init__``). :func:`parse` turns a yaml mapping into one, so the component
and ``config/validate.py`` read the options the same way:

* an unknown key is one line with a did-you-mean (:func:`did_you_mean`);
* a value of the wrong type names the key and the type the annotation asks for
  (``bool`` is never accepted as a number, an ``int`` is accepted where a ``float`` is);
* a ``ValueError`` / :class:`UserError` raised by ``__post_init__`` is reported under the
  section's name.

All problems of a section are collected and raised together as one :class:`ConfigError`, whose
``problems`` are the single lines. Nothing here imports torch or LLM Foundry.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

from foundry_ext.errors import UserError

if TYPE_CHECKING:   # typing-only names (no runtime import)
    from _typeshed import DataclassInstance
    from typing_extensions import TypeIs

T = TypeVar('T', bound='DataclassInstance')
_WHERE: contextvars.ContextVar[str] = contextvars.ContextVar('foundry_ext_config_section', default='')

_NAMES = {dict: 'a mapping', list: 'a list', tuple: 'a list', int: 'an integer', float: 'a number',
          str: 'a string', bool: 'true/false', type(None): 'null'}


class ConfigError(UserError):
    """One or more config problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(problems[0] if len(problems) == 1 else '\n  '.join(['invalid config:'] + problems))


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, else ``''``."""
    close = difflib.get_close_matches(str(key), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ''


def unknown_key(key: str, choices: Iterable[str], where: str) -> str:
    choices = list(choices)
    hint = did_you_mean(key, choices) or (f"; valid keys: {', '.join(sorted(choices))}" if len(choices) <= 12 else '')
    return f'unknown key {join(where, key)}{hint}'


def choice_error(value: Any, choices: Iterable[str], where: str) -> str:
    choices = list(choices)
    return f"{where} {value!r} is not one of {', '.join(choices)}{did_you_mean(str(value), choices)}"


def join(where: str, key: str) -> str:
    return f'{where}.{key}' if where else str(key)


# ------------------------------------------------------------------------------ types


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


def type_ok(value: Any, tp: Any) -> bool:
    """Does ``value`` (plain yaml data) fit the annotation ``tp``?"""
    if tp is Any or tp is object:
        return True
    if isinstance(tp, tuple):                       # a table of accepted python types
        return any(type_ok(value, t) for t in tp)
    origin = _origin(tp)
    if origin is Union or (hasattr(types, 'UnionType') and isinstance(tp, types.UnionType)):
        return any(type_ok(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if tp is type(None) or tp is None:
        return value is None
    if isinstance(value, bool):                     # bool is an int subclass: never a number here
        return tp is bool
    if tp is float:
        return isinstance(value, (int, float))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return isinstance(value, (Mapping, tp))
    if origin in (list, tuple, typing.Sequence, Iterable) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        items = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return not items or all(type_ok(v, items[0]) for v in value)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        args = typing.get_args(tp)
        return not args or all(type_ok(v, args[1]) for v in value.values())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def describe(tp: Any) -> str:
    """An annotation in words: ``int | None`` -> 'an integer or null'."""
    if isinstance(tp, tuple):
        parts = [describe(t) for t in tp]
    else:
        origin = _origin(tp)
        if origin is Union or (hasattr(types, 'UnionType') and isinstance(tp, types.UnionType)):
            parts = [describe(a) for a in typing.get_args(tp)]
        elif origin is Literal:
            return 'one of ' + ', '.join(repr(a) for a in typing.get_args(tp))
        elif dataclasses.is_dataclass(tp):
            return 'a mapping'
        elif origin is not None:
            return _NAMES.get(origin, 'a list' if origin in (typing.Sequence, Iterable) else 'a mapping')
        else:
            return _NAMES.get(tp, getattr(tp, '__name__', str(tp)))
    out: list[str] = []
    for p in parts:
        if p not in out:
            out.append(p)
    return ' or '.join(out)


def type_problem(value: Any, tp: Any, where: str) -> str | None:
    if type_ok(value, tp):
        return None
    return f'{where} must be {describe(tp)}, got {type(value).__name__} {value!r}'


def check_table(section: Mapping[str, Any], table: Mapping[str, Any], where: str,
                nulls: bool = True) -> list[str]:
    """Keys of ``section`` against a ``{key: type or tuple of types}`` table (LLM Foundry's own
    sections, whose schema is generated). ``null`` means "the default" and is accepted."""
    problems = []
    for k, v in section.items():
        if k not in table:
            problems.append(unknown_key(k, table, where))
        elif not (nulls and v is None):
            p = type_problem(v, table[k], join(where, k))
            if p:
                problems.append(p)
    return problems


# ------------------------------------------------------------------------------ dataclasses


def fields(cls: type) -> dict[str, Any]:
    """``{name: resolved annotation}`` of a config dataclass's init fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def parse(cls: type[T], data: Mapping[str, Any] | None, where: str = '', *,
          ignore: Iterable[str] = ()) -> T:
    """``data`` -> ``cls(**data)``, checked key by key; raises :class:`ConfigError`.

    ``ignore``: keys the caller handles itself (e.g. ``name`` of a registry entry). Nested
    dataclass fields are parsed recursively with ``where.<field>``.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError([f'{where or cls.__name__} must be a mapping, got {type(data).__name__} {data!r}'])
    spec = fields(cls)
    skip = set(ignore)
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k in skip:
            continue
        if k not in spec:
            problems.append(unknown_key(k, [*spec, *skip], where))
            continue
        tp = spec[k]
        sub = _dataclass_of(tp)
        if sub is not None and isinstance(v, Mapping):
            try:
                kwargs[k] = parse(sub, v, join(where, k))
            except ConfigError as e:
                problems.extend(e.problems)
            continue
        p = type_problem(v, tp, join(where, k))
        if p:
            problems.append(p)
        else:
            kwargs[k] = v
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs and f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    problems += [f'{join(where, m)} is required' for m in missing]
    if problems:
        raise ConfigError(problems)
    token = _WHERE.set(where)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError([_under(where, p) for p in e.problems]) from None
    except (ValueError, UserError) as e:
        raise ConfigError([_under(where, str(e))]) from None
    finally:
        _WHERE.reset(token)


@contextlib.contextmanager
def in_section(where: str) -> Iterator[None]:
    """Run checks of a parsed section (e.g. its data checks) under that section's name."""
    token = _WHERE.set(where)
    try:
        yield
    finally:
        _WHERE.reset(token)


def section(default: str = '') -> str:
    """Inside a config ``__post_init__`` run by :func:`parse`: the yaml path of the section being
    parsed (e.g. ``train_loader``), so messages name it; ``default`` when built directly."""
    return _WHERE.get() or default


def _under(where: str, msg: str) -> str:
    """Prefix a component's own message with the section it came from (once)."""
    if not where or msg.startswith(where):
        return msg
    return f'{where}: {msg}'


def _dataclass_of(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if _origin(tp) is Union or (hasattr(types, 'UnionType') and isinstance(tp, types.UnionType)):
        dcs = [a for a in typing.get_args(tp) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return dcs[0] if len(dcs) == 1 else None
    return None


def collect(problems: list[str], fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; a ConfigError/UserError becomes lines in ``problems`` (returns None then)."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as e:
        problems.extend(e.problems)
    except UserError as e:
        problems.append(str(e))
    return None


# ------------------------------------------------------------------------------ range helpers


def positive(value: Any, name: str, allow_none: bool = False) -> None:
    """``__post_init__`` helper: ``value > 0`` (raises ValueError naming ``name``)."""
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ValueError(f'{name} must be > 0, got {value!r}')


def at_least(value: Any, low: float, name: str) -> None:
    if value is not None and value < low:
        raise ValueError(f'{name} must be >= {low}, got {value!r}')


def one_of(value: Any, choices: Iterable[str], name: str) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(choice_error(value, choices, name))


def is_number(v: Any) -> TypeIs[int | float]:
    """A finite int or float that is not a bool."""
    import math
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def known_keys(section: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    """Raise a one-line UserError for the first key of ``section`` not in ``keys``."""
    keys = list(keys)
    for k in section:
        if k not in keys:
            raise UserError(unknown_key(k, keys, where))


def choice(value: Any, choices: Iterable[str], where: str) -> Any:
    """``value`` if it is one of ``choices``, else a one-line UserError with a did-you-mean."""
    choices = list(choices)
    if value not in choices:
        raise UserError(f'{where} must be one of {choices}, got {value!r}{did_you_mean(str(value), choices)}')
    return value
