"""The house rules of the package layout, checked on the imports of every file under src/.

Floors, bottom up (README, "Layout"):

0. ground floor: ``errors``, ``expression``, ``metrics``, ``geometry``, ``devices``, ``user_cache``,
   ``stain``, ``nuclei``, ``_llvm_guard`` — import nothing of the package but ``errors``;
1. ``io/`` — the ground floor and itself;
2. ``models/`` — ``io`` and the ground floor;
3. ``training/`` and ``inference/`` — ``models``, ``io``, the ground floor (not each other);
4. application modules at the package root (``cli``, ``demo``, ``project``, ...), then
   ``widgets/``, the only place that imports Qt or napari.

Every import counts, including the ones inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "napari_histoexpress"
SRC = Path(__file__).resolve().parents[1] / "src" / PKG

GROUND = {
    "errors",
    "expression",
    "metrics",
    "geometry",
    "devices",
    "stain",
    "user_cache",
    "nuclei",
    "_llvm_guard",
}
ALLOWED: dict[str, set[str]] = {
    "io": {"io"},
    "models": {"io", "models"},
    "training": {"io", "models", "training"},
    "inference": {"io", "models", "inference"},
}
GUI_TOPS = {
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "vispy",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    text = path.read_text(encoding="utf-8")
    return _parse(text, _module_name(path), is_package=path.name == "__init__.py")


def _parse(text: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    tree = ast.parse(text)
    here = module.split(".")
    package = here if is_package else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if node.module is None or mod == PKG:  # `from . import x`: x may be a module
                found += [
                    (node.lineno, mod if a.name.startswith("__") else f"{mod}.{a.name}")
                    for a in node.names  # `from .. import __version__` is the package
                ]
            else:
                found.append((node.lineno, mod))
    return found


def _floor(module: str) -> str | None:
    """The floor name of a package module: a ground-floor name, a subpackage, or None."""
    parts = module.split(".")
    if parts[0] != PKG or len(parts) < 2:
        return None
    return parts[1]


FILES = sorted(SRC.rglob("*.py"))


def test_the_rules_see_every_file() -> None:
    assert len(FILES) > 40
    assert {_floor(_module_name(f)) for f in FILES} >= {"io", "models", "training", "inference"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_floors(path: Path) -> None:
    me = _floor(_module_name(path))
    problems = []
    for line, mod in _imports(path):
        top = mod.split(".")[0]
        if top in GUI_TOPS and me != "widgets":
            problems.append(f"line {line}: {mod} (Qt/napari outside widgets/)")
        target = _floor(mod)
        if target is None or mod == PKG or target == me:
            continue
        if me in GROUND:
            if target != "errors":
                problems.append(f"line {line}: {mod} (ground floor imports only errors)")
        elif me in ALLOWED and target not in GROUND and target not in ALLOWED[me]:
            problems.append(f"line {line}: {mod} ({me}/ may import {sorted(ALLOWED[me])})")
    assert not problems, f"{path.relative_to(SRC)}:\n" + "\n".join(problems)


def test_the_checker_resolves_relative_imports() -> None:
    """A rule that cannot fail is no rule: relative and nested imports resolve."""
    text = (
        "from ..inference import spots\n"
        "from . import pixnet\n"
        "def f():\n    from ..training.loop import fit\n"
        "import qtpy.QtWidgets\n"
    )
    mods = sorted(m for _, m in _parse(text, f"{PKG}.models.probe"))
    assert mods == sorted(
        [f"{PKG}.inference", f"{PKG}.models.pixnet", f"{PKG}.training.loop", "qtpy.QtWidgets"]
    )
    assert _floor(f"{PKG}.inference") not in ALLOWED["models"]
