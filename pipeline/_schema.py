"""Build frozen config dataclasses from plain YAML mappings, naming every bad key and value.

The pipeline's one config file has a section per stage; each section becomes that stage's own
frozen dataclass (``TrainConfig``, ``ExportConfig``, ...). This module does the conversion once,
for any dataclass, from its fields and type hints: unknown keys are refused with the list of
valid ones, values are checked against the field's type (``int``, ``float``, ``str``, ``bool``,
``X | None``, ``tuple[X, ...]``, ``Literal[...]``, nested dataclasses), and the dataclass's own
``__post_init__`` checks run last. Every message starts with the dotted path of the value.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Section:
    ...     epochs: int = 1
    >>> build_dataclass(Section, {"epochs": 3}, "train")
    Section(epochs=3)
    >>> build_dataclass(Section, {"epoch": 3}, "train")
    Traceback (most recent call last):
    ...
    detstack.errors.ConfigError: train: unknown key 'epoch' (valid keys: epochs)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from detstack.errors import ConfigError, DetstackError

__all__ = ["build_dataclass", "dataclass_to_plain"]

T = TypeVar("T")


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        expected = " or ".join(_name(a) for a in args)
        raise ConfigError(f"{where}: expected {expected}, got {_describe(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(
            f"{where}: {value!r} is not allowed; expected one of {', '.join(map(repr, args))}"
        )
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(items))
        if args and len(args) != len(items):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(items)}")
        pairs = enumerate(zip(items, args, strict=True))
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return dict(value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        return build_dataclass(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads `name: 2024` as an int; a str field means text
        raise ConfigError(f"{where}: expected text, got {_describe(value)}")
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {_describe(value)}")
    return value  # a type we do not check (the dataclass's own validation still runs)


def _name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def build_dataclass(
    cls: type[T],
    data: Any,
    where: str,
    *,
    exclude: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from a mapping; ``where`` (e.g. ``"train"``) prefixes every message.

    Args:
        cls: a dataclass.
        data: the mapping from the config file (``None`` means all defaults).
        where: dotted path of this section in the file.
        exclude: fields the pipeline sets itself; naming them in the file is an error.
        extra: values for fields the pipeline sets itself (passed unchecked).

    Raises:
        ConfigError: unknown key, wrong type, or a value the dataclass refuses.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    excluded = set(exclude)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in excluded}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            managed = " (set by the pipeline itself)" if key in excluded else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{managed}{hint} "
                f"(valid keys: {', '.join(sorted(fields))})"
            )
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    kwargs.update(extra or {})
    try:
        return cls(**kwargs)
    except DetstackError as error:
        raise ConfigError(f"{where}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from None


def dataclass_to_plain(value: Any, *, exclude: Mapping[type, Iterable[str]] | None = None) -> Any:
    """A dataclass (recursively) as YAML-safe plain values; tuples become lists, paths text."""
    exclude = exclude or {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        skipped = set(exclude.get(type(value), ()))
        return {
            f.name: dataclass_to_plain(getattr(value, f.name), exclude=exclude)
            for f in dataclasses.fields(value)
            if f.init and f.name not in skipped
        }
    if isinstance(value, (list, tuple)):
        return [dataclass_to_plain(v, exclude=exclude) for v in value]
    if isinstance(value, Mapping):
        return {str(k): dataclass_to_plain(v, exclude=exclude) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
