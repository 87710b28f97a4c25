"""Fixtures of the gene-knowledge tests: no network, a private user cache, small tables,
and one all-MiniLM-L6-v2 shared by the tests that run it."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from napari_histoexpress.models.gene_knowledge.text_encoders import TextEncoder

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def _offline_and_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test runs with the network cut (a connection attempt fails the call) and a
    user cache of its own."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HISTOEXPRESS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HISTOEXPRESS_GENE_DESCRIPTIONS", raising=False)
    monkeypatch.delenv("NCBI_API_KEY", raising=False)
    monkeypatch.delenv("NCBI_EMAIL", raising=False)


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def small_table() -> Any:
    from napari_histoexpress.models.gene_knowledge import read_description_file

    return read_description_file(FIXTURES / "descriptions_small.tsv")


@pytest.fixture
def no_bundled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The bundled table points at a file that does not exist."""
    from napari_histoexpress.models.gene_knowledge import descriptions

    missing = tmp_path / "not-built" / "descriptions.tsv"
    monkeypatch.setattr(descriptions, "BUNDLED_DESCRIPTIONS", missing)
    return missing


@pytest.fixture(scope="session")
def minilm() -> Any:
    """The offline default text encoder on the CPU (loaded once)."""
    from napari_histoexpress.models.gene_knowledge import create_text_encoder

    return create_text_encoder("minilm", device="cpu")


class CountingEncoder(TextEncoder):
    """A fast deterministic text encoder that counts the texts it encodes."""

    def __init__(self, name: str = "counting", dim: int = 8, weights: str = "w1") -> None:
        self.name = name
        self._dim = dim
        self._weights = weights
        self.calls: list[list[str]] = []

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def weights_hash(self) -> str:
        return self._weights

    def variant(self, kind: Literal["pooled", "tokens"], max_tokens: int | None = None) -> str:
        return f"{kind}-{max_tokens}"

    def _vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") + len(text)
        return np.random.default_rng(seed).standard_normal(self._dim).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self._dim))

    def encode_tokens(self, texts: Sequence[str], *, max_tokens: int = 128) -> list[np.ndarray]:
        self.calls.append(list(texts))
        out = []
        for t in texts:
            n = min(max_tokens, len(t.split()))
            out.append(np.tile(self._vector(t), (n, 1)).astype(np.float16))
        return out


@pytest.fixture
def counting() -> CountingEncoder:
    return CountingEncoder()


@pytest.fixture
def counting_class() -> type[CountingEncoder]:
    return CountingEncoder
