"""The on-disk text-embedding cache: hits skip the model, keys follow text, weights and
settings, bad files are recomputed, an unwritable cache is only a warning."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_histoexpress.models.gene_knowledge import (
    DescriptionTable,
    EmbeddingCache,
    TextGeneEncoder,
)
from napari_histoexpress.models.gene_knowledge.embedding_cache import (
    default_cache_root,
    text_sha256,
)

TEXTS = ["first description", "second description", "first description"]


def test_second_call_does_not_run_the_model(counting: Any, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.encode(counting, TEXTS)
    assert counting.calls == [["first description", "second description"]]  # deduplicated
    second = cache.encode(counting, TEXTS)
    assert len(counting.calls) == 1
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[0], first[2])
    assert (cache.hits, cache.misses) == (4, 2)  # texts served without and by the model


def test_a_changed_text_is_a_new_key(counting: Any, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    cache.encode(counting, ["a text"])
    cache.encode(counting, ["a text", "a text, edited"])
    assert counting.calls == [["a text"], ["a text, edited"]]
    folder = cache.folder(counting, "pooled")
    assert cache.path(folder, "a text").name == f"{text_sha256('a text')}.npy"
    assert cache.path(folder, "a text") != cache.path(folder, "a text, edited")


def test_other_weights_or_settings_are_other_folders(counting_class: Any, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    a = counting_class(weights="w1")
    b = counting_class(weights="w2")
    cache.encode(a, ["t"])
    cache.encode(b, ["t"])
    assert len(b.calls) == 1  # not served a's vector
    assert cache.folder(a, "pooled") != cache.folder(b, "pooled")
    assert cache.folder(a, "tokens", 8) != cache.folder(a, "tokens", 16)
    assert cache.folder(a, "pooled").parent == tmp_path / "cache" / "counting"
    key = (cache.folder(a, "pooled") / "key.json").read_text()
    assert '"weights_hash": "w1"' in key


def test_token_sequences_are_cached(counting: Any, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.encode_tokens(counting, ["one two three", "four"], max_tokens=2)
    assert [s.shape for s in first] == [(2, 8), (1, 8)]
    again = cache.encode_tokens(counting, ["one two three", "four"], max_tokens=2)
    assert len(counting.calls) == 1
    for a, b in zip(first, again, strict=True):
        assert a.dtype == np.float16 and np.array_equal(a, b)
    cache.encode_tokens(counting, ["one two three"], max_tokens=3)  # another cap: recomputed
    assert len(counting.calls) == 2


def test_a_corrupt_file_is_recomputed(counting: Any, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    good = cache.encode(counting, ["t"])
    path = cache.path(cache.folder(counting, "pooled"), "t")
    path.write_bytes(b"not numpy")
    np.testing.assert_array_equal(cache.encode(counting, ["t"]), good)
    assert len(counting.calls) == 2
    np.save(path, np.zeros(3, np.float32))  # wrong width
    cache.encode(counting, ["t"])
    assert len(counting.calls) == 3


def test_an_unwritable_cache_warns_and_still_encodes(counting: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    cache = EmbeddingCache(blocker / "cache")
    with pytest.warns(UserWarning, match="cannot write the text-embedding cache"):
        got = cache.encode(counting, ["t"])
    assert got.shape == (1, 8) and not cache.enabled
    cache.encode(counting, ["t"])  # no second warning, computed again
    assert len(counting.calls) == 2


def test_disabled_cache_always_runs(counting: Any, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache", enabled=False)
    cache.encode(counting, ["t"])
    cache.encode(counting, ["t"])
    assert len(counting.calls) == 2 and not (tmp_path / "cache").exists()


def test_default_root_is_under_the_user_cache(tmp_path: Path) -> None:
    assert default_cache_root() == tmp_path / "home" / "gene_knowledge" / "text_embeddings"
    assert EmbeddingCache().root == default_cache_root()


def test_minilm_gene_embeddings_are_cached(
    minilm: Any, small_table: DescriptionTable, tmp_path: Path
) -> None:
    encoder = TextGeneEncoder(minilm, small_table)  # default cache, under HISTOEXPRESS_HOME
    before = minilm.texts_encoded
    first = encoder.embed(["ERBB2", "KRT19"])
    assert minilm.texts_encoded == before + 2
    again = encoder.embed(["KRT19", "HER2"])
    assert minilm.texts_encoded == before + 2  # the model did not run
    np.testing.assert_array_equal(again.vectors, first.vectors[::-1])
    direct = minilm.encode([small_table.get("ERBB2").description])  # type: ignore[union-attr]
    np.testing.assert_allclose(first.vectors[0], direct[0], atol=1e-6)
    stored = list((tmp_path / "home" / "gene_knowledge" / "text_embeddings").rglob("*.npy"))
    assert len(stored) == 2
    before = minilm.texts_encoded  # the direct call ran the model once
    tokens = encoder.embed_tokens(["ERBB2"], max_tokens=8)
    encoder.embed_tokens(["ERBB2"], max_tokens=8)
    assert minilm.texts_encoded == before + 1
    assert tokens.sequences[0].shape == (8, 384)
    assert all(os.path.getsize(p) > 0 for p in stored)
