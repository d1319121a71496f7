"""Held-out cross-entropy of n-gram models: the floor a trained MoE must clear.

Three models are fitted on the train split's token ids and scored on the validation
split, per document, so no bigram crosses a document boundary:

- ``unigram``: add-one (Laplace) smoothing over the whole vocabulary,
  ``p(w) = (c(w) + 1) / (N + V)``.
- ``bigram_interpolated``: Jelinek-Mercer, ``p(w | u) = lam * c(u, w) / c(u) +
  (1 - lam) * p_unigram(w)``, with ``lam`` chosen on a slice of the train split (every
  ``heldout_every``-th document), never on the validation split.
- ``bigram_absolute_discounting``: ``p(w | u) = max(c(u, w) - d, 0) / c(u) +
  d * n_types(u) / c(u) * p_unigram(w)``, with Ney's estimate ``d = n_1 / (n_1 + 2 n_2)``
  from the counts of bigram types seen once and twice.

A bigram model falls back to the unigram for a context never seen in training
(``c(u) = 0``) and for the first token of each document, which has no context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

LAMBDA_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)


@dataclass(frozen=True)
class _Counts:
    vocab_size: int
    unigram: np.ndarray  # (vocab,) token counts
    n_tokens: int
    bigram_keys: np.ndarray  # sorted u * vocab_size + w of the bigram types seen
    bigram_counts: np.ndarray  # c(u, w), aligned with bigram_keys
    context_counts: np.ndarray  # (vocab,) c(u): bigrams that start with u
    context_types: np.ndarray  # (vocab,) distinct w seen after u


def _pairs(docs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Return (previous, next) token ids of every bigram inside the documents."""
    previous = [d[:-1] for d in docs if len(d) > 1]
    following = [d[1:] for d in docs if len(d) > 1]
    if not previous:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(previous).astype(np.int64), np.concatenate(following).astype(np.int64)


def _count(docs: Sequence[np.ndarray], vocab_size: int) -> _Counts:
    flat = np.concatenate(docs).astype(np.int64) if docs else np.zeros(0, np.int64)
    previous, following = _pairs(docs)
    keys, counts = np.unique(previous * vocab_size + following, return_counts=True)
    return _Counts(
        vocab_size=vocab_size,
        unigram=np.bincount(flat, minlength=vocab_size),
        n_tokens=len(flat),
        bigram_keys=keys,
        bigram_counts=counts,
        context_counts=np.bincount(previous, minlength=vocab_size),
        context_types=np.bincount(keys // vocab_size, minlength=vocab_size),
    )


def _unigram_probs(counts: _Counts) -> np.ndarray:
    return (counts.unigram + 1) / (counts.n_tokens + counts.vocab_size)


def _bigram_lookup(counts: _Counts, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
    """Return c(u, w) for each (u, w) pair, 0 for pairs never seen."""
    keys = previous * counts.vocab_size + following
    where = np.searchsorted(counts.bigram_keys, keys)
    where = np.minimum(where, max(len(counts.bigram_keys) - 1, 0))
    if len(counts.bigram_keys) == 0:
        return np.zeros(len(keys), np.int64)
    return np.where(counts.bigram_keys[where] == keys, counts.bigram_counts[where], 0)


def _token_nll(counts: _Counts, docs: Sequence[np.ndarray], model: str,
               lam: float = 0.9, discount: float = 0.75) -> list[np.ndarray]:
    """Return, per document, the negative log-probability (nats) of each token."""
    p_unigram = _unigram_probs(counts)
    out = []
    for doc in docs:
        doc = np.asarray(doc, dtype=np.int64)
        p = p_unigram[doc].astype(np.float64)
        if model != "unigram" and len(doc) > 1:
            previous, following = doc[:-1], doc[1:]
            c_context = counts.context_counts[previous]
            seen = c_context > 0
            c_pair = _bigram_lookup(counts, previous, following)
            safe = np.maximum(c_context, 1)
            if model == "bigram_interpolated":
                p_bigram = lam * c_pair / safe + (1 - lam) * p_unigram[following]
            elif model == "bigram_absolute_discounting":
                backoff = discount * counts.context_types[previous] / safe
                p_bigram = np.maximum(c_pair - discount, 0) / safe + backoff * p_unigram[following]
            else:
                raise ValueError(f"unknown n-gram model {model!r}")
            p[1:] = np.where(seen, p_bigram, p_unigram[following])
        out.append(-np.log(p))
    return out


def ney_discount(counts: _Counts) -> float:
    """Return Ney's absolute discount ``n_1 / (n_1 + 2 n_2)`` from the bigram counts."""
    n_1 = int(np.sum(counts.bigram_counts == 1))
    n_2 = int(np.sum(counts.bigram_counts == 2))
    return n_1 / (n_1 + 2 * n_2) if n_1 + n_2 else 0.5


def choose_lambda(train_ids: Sequence[np.ndarray], vocab_size: int,
                  heldout_every: int = 20) -> float:
    """Return the Jelinek-Mercer weight of :data:`LAMBDA_GRID` best on a train slice.

    Every ``heldout_every``-th training document is held out, counts come from the rest.
    """
    fit = [d for i, d in enumerate(train_ids) if i % heldout_every]
    heldout = [d for i, d in enumerate(train_ids) if not i % heldout_every]
    if not heldout or not fit:
        return 0.9
    counts = _count(fit, vocab_size)
    losses = [np.concatenate(_token_nll(counts, heldout, "bigram_interpolated", lam=lam)).mean()
              for lam in LAMBDA_GRID]
    return LAMBDA_GRID[int(np.argmin(losses))]


def ngram_baselines(train_ids: Sequence[Sequence[int]], valid_ids: Sequence[Sequence[int]],
                    domains: Sequence[str], vocab_size: int | None = None,
                    lam: float | None = None, discount: float | None = None) -> pd.DataFrame:
    """Return held-out cross-entropy of unigram and bigram models, overall and per domain.

    Parameters
    ----------
    train_ids, valid_ids
        Token ids per document of the train and validation splits.
    domains
        Domain label of each validation document (same length as ``valid_ids``).
    vocab_size
        Size of the vocabulary the add-one unigram spreads mass over; default: the
        largest id seen plus one.
    lam, discount
        Fix the interpolation weight or the absolute discount instead of estimating them
        from the train split.

    Returns
    -------
    pandas.DataFrame
        Tidy rows ``domain, model, nats_per_token, n_tokens``; ``domain == "all"`` is the
        whole validation split. ``attrs`` hold ``lambda``, ``discount`` and ``vocab_size``.
    """
    if len(domains) != len(valid_ids):
        raise ValueError(f"domains has {len(domains)} labels for {len(valid_ids)} "
                         "validation documents")
    train = [np.asarray(d, dtype=np.int64) for d in train_ids]
    valid = [np.asarray(d, dtype=np.int64) for d in valid_ids]
    if vocab_size is None:
        vocab_size = 1 + max(int(d.max()) for d in train + valid if len(d))
    counts = _count(train, vocab_size)
    lam = choose_lambda(train, vocab_size) if lam is None else lam
    discount = ney_discount(counts) if discount is None else discount
    labels = np.asarray(domains)
    rows = []
    for model in ("unigram", "bigram_interpolated", "bigram_absolute_discounting"):
        nll = _token_nll(counts, valid, model, lam=lam, discount=discount)
        for domain in ["all", *sorted(set(domains))]:
            chosen = [x for x, label in zip(nll, labels) if domain == "all" or label == domain]
            values = np.concatenate(chosen) if chosen else np.zeros(0)
            rows.append({"domain": domain, "model": model,
                         "nats_per_token": float(values.mean()) if len(values) else np.nan,
                         "n_tokens": len(values)})
    table = pd.DataFrame(rows)
    table.attrs.update({"lambda": lam, "discount": discount, "vocab_size": vocab_size})
    return table
