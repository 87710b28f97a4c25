"""The missing-gene policy: error, learned (with the mask) or zero, always reported."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_histoexpress.errors import HistoExpressError
from napari_histoexpress.models.gene_knowledge import (
    MISSING_POLICIES,
    FileGeneEncoder,
    MissingGenesError,
    MissingGenesWarning,
    TextGeneEncoder,
)

GENES = ["ERBB2", "NOSUCH1", "KRT19", "NOSUCH2"]


@pytest.fixture
def text_encoder(counting: Any, small_table: Any) -> TextGeneEncoder:
    return TextGeneEncoder(counting, small_table, cache=None)


def test_policies_offered() -> None:
    assert MISSING_POLICIES == ("error", "learned", "zero")


def test_error_lists_every_gene_and_why(text_encoder: TextGeneEncoder, counting: Any) -> None:
    with pytest.raises(MissingGenesError) as exc:
        text_encoder.embed(GENES)
    assert exc.value.missing == {
        "NOSUCH1": "no description in descriptions_small.tsv",
        "NOSUCH2": "no description in descriptions_small.tsv",
    }
    text = str(exc.value)
    assert text.startswith("2 of 4 genes have no embedding: NOSUCH1, NOSUCH2 (no description")
    assert "learned" in text and "zero" in text
    assert isinstance(exc.value, HistoExpressError)
    assert counting.calls == []  # failed before running the model
    with pytest.raises(MissingGenesError):
        text_encoder.embed_tokens(GENES)


def test_error_names_the_embedding_file(fixtures: Path) -> None:
    encoder = FileGeneEncoder(fixtures / "gene2vec_tiny.txt")
    with pytest.raises(MissingGenesError, match=r"NOSUCH1 \(not in the embedding file gene2vec"):
        encoder.embed(["ERBB2", "NOSUCH1"])


def test_learned_marks_the_rows(text_encoder: TextGeneEncoder) -> None:
    with pytest.warns(MissingGenesWarning) as record:
        got = text_encoder.embed(GENES, missing="learned")
    assert len(record) == 1
    assert "NOSUCH1, NOSUCH2" in str(record[0].message)
    assert "must be learned" in str(record[0].message)
    assert got.learned.tolist() == [False, True, False, True]
    assert got.vectors.shape == (4, 8)
    assert not got.vectors[[1, 3]].any() and got.vectors[[0, 2]].any()
    assert got.matched == ["ERBB2", None, "KRT19", None]
    assert set(got.missing) == {"NOSUCH1", "NOSUCH2"}
    assert got.sources == ["project", "", "project", ""]


def test_zero_writes_zeros_and_learns_nothing(fixtures: Path) -> None:
    encoder = FileGeneEncoder(fixtures / "gene2vec_tiny.txt")
    with pytest.warns(MissingGenesWarning, match="rows are zeros"):
        got = encoder.embed(GENES, missing="zero")
    assert not got.learned.any()
    assert not got.vectors[1].any() and got.vectors[0].any()
    assert got.missing["NOSUCH2"] == "not in the embedding file gene2vec_tiny.txt"


def test_token_sequences_of_missing_genes(text_encoder: TextGeneEncoder) -> None:
    with pytest.warns(MissingGenesWarning):
        got = text_encoder.embed_tokens(GENES, missing="learned", max_tokens=4)
    assert got.learned.tolist() == [False, True, False, True]
    assert got.sequences[1].shape == (1, 8) and not got.sequences[1].any()
    tokens, mask = got.padded()
    assert tokens.shape == (4, 4, 8) and tokens.dtype == np.float16
    assert mask.sum(axis=1).tolist() == got.lengths.tolist()
    assert got.lengths.tolist()[1::2] == [1, 1]


def test_no_warning_when_nothing_is_missing(text_encoder: TextGeneEncoder) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = text_encoder.embed(["ERBB2", "KRT19"], missing="learned")
    assert not got.learned.any() and got.missing == {}


def test_unknown_policy(text_encoder: TextGeneEncoder) -> None:
    with pytest.raises(ValueError, match="choose one of error, learned, zero"):
        text_encoder.embed(GENES, missing="skip")  # type: ignore[arg-type]


def test_ncbi_fills_gaps_before_the_policy(
    counting: Any, small_table: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error
    import urllib.request

    from napari_histoexpress.models.gene_knowledge import NcbiUnavailableWarning

    def offline(*_: Any, **__: Any) -> Any:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    encoder = TextGeneEncoder(counting, small_table, cache=None, ncbi=True)
    with pytest.warns(NcbiUnavailableWarning), pytest.raises(MissingGenesError) as exc:
        encoder.embed(["ERBB2", "NOSUCH1"])
    assert "not fetched from NCBI" in exc.value.missing["NOSUCH1"]
