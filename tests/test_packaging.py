"""The package is a napari plugin whether installed from a wheel or in editable mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_npe2_validate_installed_plugin() -> None:
    npe2 = shutil.which("npe2", path=str(Path(sys.executable).parent)) or "npe2"
    result = subprocess.run(
        [npe2, "validate", "napari-histoexpress"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def test_manifest_found_by_npe2_is_the_top_level_file() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-histoexpress")
    assert manifest.name == "napari-histoexpress"
    readers = manifest.contributions.readers or []
    patterns = {p for r in readers for p in r.filename_patterns}
    assert {"*.svs", "*.ndpi", "*.h5ad", "*.jpg"} <= patterns
    assert any(r.accepts_directories for r in readers)
    samples = manifest.contributions.sample_data or []
    assert [s.key for s in samples] == ["synthetic_tissue"]
    from npe2 import PluginManifest as PM

    top = PM.from_file(REPO / "napari.yaml")
    assert top.contributions == manifest.contributions


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (whl,) = out.glob("napari_histoexpress-*.whl")
    return whl


def test_wheel_carries_real_manifest_and_sample_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "napari_histoexpress/napari.yaml" in names
        assert zf.read("napari_histoexpress/napari.yaml") == (REPO / "napari.yaml").read_bytes()
        root = REPO / "sample_data"
        shipped = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        assert "demo_run/weights.safetensors" in shipped
        for name in shipped:
            member = f"napari_histoexpress/sample_data/{name}"
            assert member in names, member
            assert zf.read(member) == (REPO / "sample_data" / name).read_bytes()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = zf.read(entry_points).decode()
        assert "napari.manifest" in text and "napari_histoexpress:napari.yaml" in text
        assert "histoexpress = napari_histoexpress.cli:main" in text


def test_wheel_carries_package_data_tables(wheel: Path) -> None:
    """Data tables inside the package (the bundled gene descriptions,
    ``models/gene_knowledge/descriptions.tsv``) ship in the wheel byte for byte."""
    pkg = REPO / "src" / "napari_histoexpress"
    tables = sorted(p for p in pkg.rglob("*.tsv") if p.is_file() and not p.is_symlink())
    descriptions = pkg / "models" / "gene_knowledge" / "descriptions.tsv"
    assert descriptions in tables or not descriptions.exists()
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "napari_histoexpress/models/gene_knowledge/__init__.py" in names
        for table in tables:
            member = f"napari_histoexpress/{table.relative_to(pkg).as_posix()}"
            assert member in names, member
            assert zf.read(member) == table.read_bytes()


def test_installed_wheel_provides_manifest_and_sample_data(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    code = (
        "import napari_histoexpress, json\n"
        "from npe2 import PluginManifest\n"
        "from napari_histoexpress.io.synthetic import sample_paths\n"
        "m = PluginManifest.from_distribution('napari-histoexpress')\n"
        "paths = sample_paths()\n"
        "print(json.dumps({'pkg': napari_histoexpress.__file__, 'name': m.name,"
        " 'samples': [s.key for s in m.contributions.sample_data],"
        " 'paths': {k: str(v) for k, v in paths.items()}}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    import json

    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert info["pkg"].startswith(str(target))
    assert info["name"] == "napari-histoexpress"
    assert info["samples"] == ["synthetic_tissue"]
    for path in info["paths"].values():
        assert path.startswith(str(target)), f"sample file not from the installed wheel: {path}"
        assert Path(path).is_file() and not Path(path).is_symlink()
