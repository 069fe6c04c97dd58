"""Typed dataclass configs loaded from YAML recipes with dotted `key=value` command-line overrides.

A recipe may name another recipe under `base:` (path relative to the recipe); its values are applied
first. A relative recipe path that does not exist from the current directory is also looked up in the
repository's `configs/` directory beside the package (`configs/pretrain/x.yaml` and `pretrain/x.yaml` both work
from anywhere). Field help text lives in `field(metadata={"help": ...})` and is what `--help` prints. An error
about a key says where the key came from: the command-line override that set it, or the recipe file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from typing import Any, Iterator, Literal, Optional, Union, get_args, get_origin

import yaml

from megarec.common.errors import ConfigError


def help_field(default: Any = dataclasses.MISSING, help: str = "", default_factory: Any = dataclasses.MISSING):
    """A dataclass field carrying its `--help` text."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return "optional " + "|".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list[{_type_name(args[0])}]" if args else "list"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value against a type annotation; error names the key."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, get_args(tp)))}")
        return value
    if origin in (list, tuple):
        (inner,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _keyed(error: ConfigError, key: str) -> ConfigError:
    """Record on `error` the dotted key it is about (the innermost one wins), so that `load_config` can say
    where that key was set."""
    if getattr(error, "key", None) is None:
        error.key = key
    return error


def build(cls: type, values: dict, prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a nested dict, rejecting unknown keys."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        error = ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (valid keys under "
            f"'{prefix or '<root>'}': {', '.join(sorted(names))})"
        )
        raise _keyed(error, prefix + unknown[0])
    kwargs = {}
    for k, v in values.items():
        try:
            kwargs[k] = _coerce(v, hints[k], prefix + k)
        except ConfigError as e:
            raise _keyed(e, prefix + k) from None
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# The recipes of the checkout this package runs from: <repo>/configs, beside the package.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def recipe_path(path: str) -> str:
    """`path` when it exists (or is absolute); else the same relative path inside the repository's configs
    directory (with or without its leading `configs/`), when there is one; else `path` unchanged."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    parts = os.path.normpath(path).split(os.sep)
    candidates = [os.path.join(CONFIGS_DIR, *parts)]
    if parts[0] == "configs" and len(parts) > 1:
        candidates.insert(0, os.path.join(CONFIGS_DIR, *parts[1:]))
    return next((c for c in candidates if os.path.isfile(c)), path)


def _display(path: str) -> str:
    """A recipe path as messages show it: relative to the current directory when below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _read_yaml(path: str) -> dict:
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{_display(path)}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{_display(path)}: top level must be a mapping")
    return data


def _base_path(path: str, base: str) -> str:
    return base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)


def read_recipe(path: str, _seen: tuple = ()) -> dict:
    """Read a YAML recipe, resolving `base:` chains (a relative top-level path: see `recipe_path`)."""
    if not _seen:
        given, path = path, recipe_path(path)
        if not os.path.isfile(path):
            where = "" if os.path.isabs(given) else f" (looked in the current directory and in {CONFIGS_DIR})"
            raise ConfigError(f"config file not found: {given}{where}")
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"{_display(path)}: circular 'base:' chain")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {_display(path)} (the 'base:' of {_display(_seen[-1])})")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base:
        data = _deep_merge(read_recipe(_base_path(path, base), _seen + (path,)), data)
    return data


def _recipe_setting(path: str, parts: list[str]) -> Optional[str]:
    """The file of the `base:` chain starting at recipe `path` whose value of the dotted key `parts` wins, or
    None when no file of the chain sets it."""
    seen = set()
    while path and os.path.abspath(path) not in seen:
        seen.add(os.path.abspath(path))
        try:
            data = _read_yaml(path)
        except (ConfigError, OSError):
            return None
        node: Any = data
        for p in parts:
            node = node.get(p, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            return path
        base = data.get("base")
        path = _base_path(path, base) if isinstance(base, str) else None
    return None


_MISSING = object()


def _key_origin(
    key: Optional[str], overrides: list[tuple[list[str], str]], recipe: Optional[str], renamed: dict
) -> str:
    """Where the setting of a bad key came from, as a suffix of its error: the command-line override that set
    it (or a section holding it), else the recipe file of the `base:` chain that sets it."""
    if key is None:
        return f" (in {_display(recipe)})" if recipe else ""
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    for override_parts, text in reversed(overrides):
        n = min(len(parts), len(override_parts))
        if parts[:n] == override_parts[:n]:
            return f" (from the command line: '{text}')"
    if not recipe:
        return ""
    names = [parts] + [
        old.split(".") + parts[len(new.split(".")) :]
        for old, new in renamed.items()
        if new.split(".") == parts[: len(new.split("."))]
    ]
    for candidate in names:
        found = _recipe_setting(recipe, candidate)
        if found:
            return f" (in {_display(found)})"
    return f" (in {_display(recipe)})"


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f"override '{text}': '{p}' is not a section")
                node[p] = child = dict(child)
            else:
                node[p] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return data


def _pop_path(data: dict, parts: list[str]) -> tuple[bool, Any]:
    node = data
    for p in parts[:-1]:
        node = node.get(p)
        if not isinstance(node, dict):
            return False, None
    if parts[-1] not in node:
        return False, None
    return True, node.pop(parts[-1])


def _set_path(data: dict, parts: list[str], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def apply_renames(data: dict, renamed: dict[str, str], warn=None) -> dict:
    """Move values of renamed keys (old dotted name → new) to their new names, saying so once per key; a key
    given under both names is an error."""
    import sys

    warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
    for old, new in renamed.items():
        found, value = _pop_path(data, old.split("."))
        if not found:
            continue
        present, _ = _pop_path(_deep_copy(data), new.split("."))
        if present:
            raise ConfigError(f"'{old}' and '{new}' are the same setting: give only '{new}'")
        _set_path(data, new.split("."), value)
        warn(f"megarec: config key '{old}' is now '{new}' (the old name still works in this release)")
    return data


def _renamed_override(text: str, renamed: dict[str, str]) -> str:
    key, sep, value = text.partition("=")
    if sep and key in renamed:
        apply_renames({key: None} if "." not in key else _nested(key), {key: renamed[key]})
        return f"{renamed[key]}={value}"
    return text


def _nested(dotted: str) -> dict:
    out: dict = {}
    _set_path(out, dotted.split("."), None)
    return out


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_config(cls: type, recipe: str | None = None, overrides: list[str] | None = None) -> Any:
    """Recipe file (optional) + dotted overrides → a validated `cls` instance. Keys the config class lists in
    its `RENAMED` mapping (earlier releases' names) are read under their new names."""
    renamed = getattr(cls, "RENAMED", {})
    data = apply_renames(read_recipe(recipe) if recipe else {}, renamed)
    texts = [_renamed_override(o, renamed) for o in overrides or []]
    data = apply_overrides(data, texts)
    given = [(parse_override(new)[0], old) for new, old in zip(texts, overrides or [])]
    try:
        return build(cls, data)
    except ConfigError as e:
        origin = _key_origin(getattr(e, "key", None), given, recipe_path(recipe) if recipe else None, renamed)
        raise ConfigError(f"{e}{origin}") from None


def iter_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """(dotted name, type name, default, help) for every leaf field, recursing into sections."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, prefix + f.name + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        yield prefix + f.name, _type_name(tp), default, f.metadata.get("help", "")


def describe(cls: type) -> str:
    """Text block listing every overridable key, for `--help`."""
    lines = []
    section = None
    for name, tname, default, help_text in iter_fields(cls):
        sec = name.split(".")[0] if "." in name else ""
        if sec != section:
            section = sec
            lines.append(f"\n  [{sec or 'top level'}]")
        lines.append(f"  {name} ({tname}, default: {default!r})")
        if help_text:
            lines.append(f"      {help_text}")
    return "\n".join(lines)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
