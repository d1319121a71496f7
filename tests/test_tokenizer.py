"""The byte-level BPE tokenizer and the n-gram baselines."""

import math
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from moe_lib.data.baselines import _count, _token_nll, ney_discount, ngram_baselines
from moe_lib.data.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    bytes_per_token,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)

SHIPPED = Path(__file__).resolve().parents[1] / "datasets" / "tokenizer"
ODD_TEXTS = [
    "def f(x):\n    return x  # tab\there\n\n",
    "  leading spaces , and spaces before punctuation !",
    "Reina-Valera: «¿Qué?» — 中文 한국어 日本語 😀",
    "",
]


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory):
    texts = ["the cat sat on the mat. " * 20, "def main():\n    return 0\n" * 20,
             "el gato se sentó en la alfombra. " * 20]
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    save_tokenizer(train_bpe(texts, vocab_size=320), out)
    return out


def test_trained_tokenizer_loads_with_autotokenizer_and_round_trips(toy_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(toy_tokenizer)
    # 256 bytes + 2 specials + merges; the toy text runs out of pairs seen twice before 320.
    assert 258 < len(tokenizer) <= 320
    assert tokenizer.eos_token == tokenizer.bos_token == EOS_TOKEN
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for text in ODD_TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    # Merges were learnt: a frequent word is one token, rarer text falls back to bytes.
    assert len(tokenizer(" cat", add_special_tokens=False)["input_ids"]) == 1
    assert bytes_per_token(tokenizer, ["the cat sat on the mat."]) > 2


@pytest.mark.skipif(not (SHIPPED / "tokenizer.json").exists(), reason="no shipped tokenizer")
def test_shipped_tokenizer_round_trips():
    tokenizer = load_tokenizer(SHIPPED)
    assert len(tokenizer) == 8192
    assert tokenizer.convert_tokens_to_ids(EOS_TOKEN) == tokenizer.eos_token_id
    for text in ODD_TEXTS:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_ngram_baselines_match_hand_computation():
    # Train "0 1 0 1" over a vocabulary of 3: c = (2, 2, 0), N = 4, so add-one gives
    # p(0) = p(1) = 3/7 and p(2) = 1/7. Bigrams: c(0,1) = 2, c(1,0) = 1.
    table = ngram_baselines([[0, 1, 0, 1]], [[0, 1], [1, 2]], ["a", "b"], vocab_size=3,
                            lam=0.5, discount=0.5)
    got = table.set_index(["model", "domain"])["nats_per_token"]
    u, rare = -math.log(3 / 7), -math.log(1 / 7)
    # interpolated: p(1|0) = .5 * 2/2 + .5 * 3/7 = 5/7; p(2|1) = .5 * 0 + .5 * 1/7 = 1/14
    # discounted: p(1|0) = (2 - .5)/2 + .5 * 1/2 * 3/7 = 6/7; p(2|1) = .5 * 1/1 * 1/7 = 1/14
    expected = {
        ("unigram", "a"): u, ("unigram", "b"): (u + rare) / 2, ("unigram", "all"): (3 * u + rare) / 4,
        ("bigram_interpolated", "a"): (u - math.log(5 / 7)) / 2,
        ("bigram_interpolated", "b"): (u - math.log(1 / 14)) / 2,
        ("bigram_absolute_discounting", "a"): (u - math.log(6 / 7)) / 2,
        ("bigram_absolute_discounting", "b"): (u - math.log(1 / 14)) / 2,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert table.set_index(["model", "domain"])["n_tokens"][("unigram", "all")] == 4
    assert list(table.columns) == ["domain", "model", "nats_per_token", "n_tokens"]


def test_bigram_distributions_sum_to_one_and_ney_discount():
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 12, size=200) for _ in range(5)]
    counts = _count(train, 12)
    # c(u, w) counts 1 and 2 only: n_1 / (n_1 + 2 n_2)
    toy = _count([np.array([0, 1, 0, 1])], 3)
    assert ney_discount(toy) == pytest.approx(1 / 3)
    for model in ("unigram", "bigram_interpolated", "bigram_absolute_discounting"):
        for context in (0, 5, 11):
            pairs = [np.array([context, w]) for w in range(12)]
            nll = _token_nll(counts, pairs, model, lam=0.7, discount=ney_discount(counts))
            assert sum(math.exp(-x[1]) for x in nll) == pytest.approx(1.0, abs=1e-12)


def test_baselines_reject_mismatched_domains():
    with pytest.raises(ValueError, match="2 labels for 1 validation"):
        ngram_baselines([[0, 1]], [[0, 1]], ["a", "b"])
