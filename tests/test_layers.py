"""The launcher's packages form a stack: each imports only from the packages below it (and from
itself). What runs on the nodes (`launcher.node`) imports nothing else of the launcher, since it is
shipped to hosts on its own."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "launcher"

# bottom first; packages on one line may not import each other
STACK = [
    ("errors",),
    ("node",),
    ("spec",),
    ("plan",),
    ("record",),
    ("results",),
    ("hosts",),
    ("image", "sync"),
    ("backends",),
    ("run",),
    ("cli",),
    ("__main__",),
]
LEVEL = {name: level for level, names in enumerate(STACK) for name in names}


def _part(module: str) -> str:
    """`launcher.run.follow` -> `run`; `launcher` itself -> `` (the package's own __init__: version only)."""
    parts = module.split(".")
    if len(parts) < 2 or not ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return ""  # the package's own __init__, or a name in it (`from .. import __version__`)
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every launcher import in the file, at any depth (lazy ones too)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            found += [(node.lineno, name) for name in names if name.split(".")[0] == "launcher"]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "launcher"]
    return found


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if own == "" or own == "__init__":
            continue
        for line, target in _imports(path):
            other = _part(target)
            if other in ("", own) or other not in LEVEL:
                if other not in ("", own):
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}: a package not in the stack")
                continue
            if LEVEL[other] >= LEVEL[own] or (own == "node" and other != "node"):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports {target} (not below it)")
    return bad


def test_every_package_is_in_the_stack() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(LEVEL), sorted((packages | modules) - set(LEVEL))


def test_no_package_imports_one_above_it() -> None:
    assert upward_imports() == []


def test_the_check_finds_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself works: a results module that imports the conductor is caught."""
    fake = tmp_path / "launcher"
    (fake / "results").mkdir(parents=True)
    (fake / "run").mkdir()
    for folder in (fake, fake / "results", fake / "run"):
        (folder / "__init__.py").write_text("")
    (fake / "results" / "table.py").write_text("def f():\n    from ..run import conduct\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert upward_imports() == ["launcher/results/table.py:2: results imports launcher.run (not below it)"]
