"""Reading a user's YAML file into a mapping, with one-line errors that name the file.

Only a regular file of at most MAX_FILE_BYTES is read (never a device, a pipe or a folder), and
the document may expand, through anchors, aliases and merge keys, to at most MAX_NODES values and
MAX_DEPTH levels: a small file that expands to gigabytes is refused before it is built.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` may be overridden by the mapping's own keys
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "found unhashable key", key_node.start_mark) from None
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_user_file(path: Path, label: str, limit: int = MAX_FILE_BYTES, follow: bool = True) -> bytes:
    """The bytes of a user's regular file of at most `limit` bytes; SpecError naming `label` otherwise.

    Opened without blocking, so a FIFO or a device is refused rather than waited on or read forever;
    with `follow=False` a symbolic link is refused too."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except ValueError:
        raise SpecError(f"{label}: the path holds a NUL byte") from None
    except FileNotFoundError:
        raise SpecError(f"{label}: file not found") from None
    except OSError as exc:
        if not follow and os.path.islink(path):
            raise SpecError(f"{label}: is a symbolic link; expected a file") from None
        raise SpecError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SpecError(f"{label}: is a directory, expected a YAML file")
        if not stat.S_ISREG(mode):
            raise SpecError(f"{label}: is not a regular file (a device, a pipe or a socket)")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise SpecError(f"{label}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise SpecError(f"{label}: larger than {limit // 1024} kB; this is not a settings file")
    return data


def load_mapping(path: Path, label: str) -> dict[str, Any]:
    """Parse `path` as YAML and return its top-level mapping; raise SpecError naming `label`."""
    try:
        text = read_user_file(path, label).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{label}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, label)
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise SpecError(f"{label}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # PyYAML's int(): a number of thousands of digits
        raise SpecError(f"{label}: a value YAML cannot hold: {str(exc).split(';')[0]}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "unparsable"
        raise SpecError(f"{label}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{label}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    _refuse_nul(data, label, "")
    if data is None:
        raise SpecError(f"{label}: the file is empty, expected a mapping of settings")
    if not isinstance(data, dict):
        raise SpecError(f"{label}: expected a mapping of settings at the top level, got {describe(data)}")
    return data


def _check_expansion(root: yaml.Node, label: str) -> None:
    """Refuse a document whose aliases expand to more than MAX_NODES values or MAX_DEPTH levels,
    or that refers to itself: counted on the composed graph, where an alias is one shared node."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                raise SpecError(f"{label}: expands to more than {MAX_NODES} values (through aliases, `*name`, "
                                "or merge keys, `<<`); write the settings out")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise SpecError(f"{label}: line {node.start_mark.line + 1}: an alias refers to the value that holds it")
        if depth > MAX_DEPTH:
            raise SpecError(f"{label}: line {node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node))


def _refuse_nul(value: Any, label: str, where: str) -> None:
    """A NUL byte can be in no path, argument or environment value: refuse it wherever it is."""
    if isinstance(value, str) and "\0" in value:
        raise SpecError(f"{label}: {where or 'a key'}: holds a NUL byte (\\0), which no path, argument or variable can")
    if isinstance(value, dict):
        for key, item in value.items():
            shown = str(key).encode("unicode_escape").decode()
            name = f"{where}.{shown}" if where else shown
            _refuse_nul(key, label, name)
            _refuse_nul(item, label, name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_nul(item, label, f"{where}[{i}]")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def describe(value: Any) -> str:
    """How a value reads in an error message: `'four'`, `4.5`, `a list`, `nothing`."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
