"""The leave-one-section-out benchmark scripts: their runs are valid ``histoexpress cv``
options and their command lines parse (the runs themselves take an hour: not in tests)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["her2st_cv", "mob_cv"])
def test_default_runs_are_cv_options(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_histoexpress.cli import cv_train_config
    from napari_histoexpress.training.tasks import trainable_models

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(script)
    labels = [run.label for run in module.DEFAULT_RUNS]
    assert len(set(labels)) == len(labels)
    for run in module.DEFAULT_RUNS:
        config = cv_train_config([*run.options, "--genes", "250"])
        assert config.model in trainable_models() and config.n_genes == 250


@pytest.mark.parametrize("script", ["her2st_cv", "mob_cv"])
def test_help_lists_the_default_runs(script: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = " ".join(out.split())  # argparse wraps the help
    assert "--run LABEL OPTIONS" in out
    assert "Default runs: pixnet-resnet18 = --model pixnet --backbone resnet18" in out
