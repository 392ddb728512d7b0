"""Reading a user's YAML file into a mapping, with one-line errors that name the file.

Only a regular file of at most MAX_FILE_BYTES is read (never a device, a pipe or a folder), and
the document may expand, through anchors, aliases and merge keys, to at most MAX_NODES values and
MAX_DEPTH levels: a small file that expands to gigabytes is refused before it is built.
"""

from __future__ import annotations

import os
import re
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


def shown_path(path: Path | str) -> Path:
    """`path` as messages name it and the launcher keeps it: normalised (`jobs/x/../../cluster.yaml` is
    `cluster.yaml`), relative when given relative; as given when a symbolic link takes its `..`
    somewhere else than the normalised path."""
    path = Path(path)
    normal = Path(os.path.normpath(path))
    if normal == path or not (os.path.lexists(path) or os.path.lexists(normal)):
        return normal  # when both name nothing, the shorter says it as well
    try:
        return normal if os.path.samefile(path, normal) else path
    except OSError:  # one of them is missing: a link took `..` elsewhere
        return path


def file_in_folder(given: str | Path, names: tuple[str, ...]) -> Path:
    """`given` (as `shown_path` names it), or for a folder the first of `names` it holds (`launch
    jobs/allreduce` is its job.yaml); SpecError naming a folder that holds none of them."""
    path = shown_path(given)
    if not path.is_dir():
        return path
    for name in names:
        if os.path.lexists(path / name):  # what it is (a file, or not) is for the reading to say
            return path / name
    raise SpecError(f"{shown_path(path)}: is a directory holding no {' or '.join(names)}; "
                    f"name the {'job ' if names == ('job.yaml',) else ''}file")


def load_mapping(path: Path, label: str) -> dict[str, Any]:
    """Parse `path` as YAML and return its top-level mapping; raise SpecError naming `label`."""
    text = _text(read_user_file(path, label), label)
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
    data = _checked_strings(data, label, "")
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


def _text(data: bytes, label: str) -> str:
    """The file's text, which is UTF-8 and holds only what YAML may hold (PyYAML's own test); else
    SpecError naming the line, the column and the byte or character."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(data, exc.start)
        raise SpecError(f"{label}: line {line}, column {column}: not UTF-8 text "
                        f"(byte 0x{data[exc.start]:02x}: {exc.reason})") from None
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        line, column = _line_column(text, bad.start())
        code = ord(bad.group())
        what = ("a NUL byte (0x00)" if code == 0 else f"the control byte 0x{code:02x}" if code < 0x80
                else f"the control character U+{code:04X}" if code < 0xA0 else f"the character U+{code:04X}")
        hint = "" if code == 0 else "; in a double-quoted string, write it as an escape (\\x01, \\u009b)"
        raise SpecError(f"{label}: line {line}, column {column}: holds {what}, which a YAML file cannot hold{hint}")
    return text


def _line_column(text: str | bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of `offset`; a column counts characters, not bytes."""
    newline = "\n" if isinstance(text, str) else b"\n"
    start = text.rfind(newline, 0, offset) + 1
    before = text[start:offset]
    width = len(before.decode("utf-8", "replace") if isinstance(before, bytes) else before)
    return text.count(newline, 0, offset) + 1, width + 1


_SURROGATE = re.compile("[\ud800-\udfff]")


def _checked_strings(value: Any, label: str, where: str) -> Any:
    """`value` with every string (keys too) checked and JSON's surrogate-pair escapes joined: YAML
    keeps `"\\ud83d\\ude42"` (as json.dumps writes an emoji) as two halves, which no file, argument or
    variable can hold, so a pair becomes the character it means; a NUL byte or a lone half is a
    SpecError naming the key."""
    if isinstance(value, str):
        return _checked_string(value, label, where or "a key")
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            raw = f"{where}.{_shown(key)}" if where else _shown(key)
            key = _checked_strings(key, label, raw)
            name = f"{where}.{_shown(key)}" if where else _shown(key)
            if key in out:
                raise SpecError(f"{label}: {name}: the key is given twice (once as escapes)")
            out[key] = _checked_strings(item, label, name)
        return out
    if isinstance(value, list):
        return [_checked_strings(item, label, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _checked_string(text: str, label: str, where: str) -> str:
    if "\0" in text:
        raise SpecError(f"{label}: {where}: holds a NUL byte (\\0), which no path, argument or variable can")
    if not _SURROGATE.search(text):
        return text
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    lone = _SURROGATE.search(joined)
    if lone:
        raise SpecError(f"{label}: {where}: holds half a UTF-16 surrogate pair, '\\u{ord(lone.group()):04x}', "
                        "which is no character; escape both halves (\\ud83d\\ude42) or write the character itself")
    return joined


def _shown(key: Any) -> str:
    """A key as an error names it, escapes shown as such."""
    return str(key).encode("unicode_escape", "backslashreplace").decode()


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
