"""Reading a YAML config file safely: one mapping, or one :class:`InputError` line.

``yaml.SafeLoader`` (no Python objects) extended to refuse repeated keys and keys that are
lists or mappings; nesting deeper than :data:`MAX_DEPTH` and documents whose aliases expand to
more than :data:`MAX_VALUES` values (an "alias bomb": a few hundred bytes that expand to
gigabytes when printed) are refused before any value is echoed.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from ptychograph.errors import InputError

#: Deepest nesting of lists and mappings a config may have (a real one has 3 levels).
MAX_DEPTH = 32
#: Most values a config may hold once its aliases are expanded.
MAX_VALUES = 100_000


class KeyError_(yaml.YAMLError):
    """A mapping key repeated, or a key that is not a plain value."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing repeated keys and keys that are lists or mappings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise KeyError_(f"a key must be a plain value, not a list or mapping (line {line})")
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # pragma: no cover - scalars are hashable
                raise KeyError_(f"a key must be a plain value (line {line})")
            if key in seen:
                raise KeyError_(f"duplicate key {str(key)[:60]!r} (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (``{}`` for an empty file)."""
    if not path.exists():
        raise InputError("config", f"{path} does not exist")
    if not path.is_file():
        raise InputError("config", f"{path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        reason = str(err)[:120]
        raise InputError("config", f"{path} is not a readable UTF-8 text file ({reason})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except KeyError_ as err:
        raise InputError("config", f"{path}: {err}") from None
    except RecursionError:
        raise InputError("config", f"{path} is nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError("config", f"{path} is not valid YAML{where}") from None
    check_size(raw, str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError("config", f"{path} must hold a mapping of sections")
    return raw


def check_size(value: Any, where: str) -> None:
    """Refuse ``value`` nested deeper than :data:`MAX_DEPTH` or holding more than
    :data:`MAX_VALUES` values with aliases expanded (counted without expanding them)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise InputError(
                "config", f"{where} expands to more than {MAX_VALUES} values (YAML aliases?)"
            )
        if depth > MAX_DEPTH:
            raise InputError("config", f"{where} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((item, depth + 1) for pair in node.items() for item in pair)
        elif isinstance(node, list | tuple):
            stack.extend((item, depth + 1) for item in node)
