"""What a finished training run shows: loss curves, final loss beside n-gram baselines, balance.

Reads a run directory written by ``moe_lib.training.train`` (``metrics.csv``, ``expert-load.csv``,
``data/train-tokens.npy``) and returns tidy tables; nothing here trains or plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from moe_lib.data.baselines import ngram_baselines
from moe_lib.training.train import recipe_for
from moe_lib.training.training_data import eval_blocks, read_documents


def _split_documents(stream: np.ndarray, eos: int) -> list[np.ndarray]:
    """Return the documents of a packed stream, each ending with its EOS (as the model sees them)."""
    ends = np.flatnonzero(stream == eos) + 1
    return [doc for doc in np.split(stream, ends) if len(doc)]


def loss_curves(run_dir: Path) -> pd.DataFrame:
    """Return validation loss per checkpoint: ``step, tokens_seen, elapsed_s, domain, val_loss``."""
    table = pd.read_csv(Path(run_dir) / "metrics.csv")
    return table[["step", "tokens_seen", "elapsed_s", "domain", "val_loss", "train_loss"]]


def expert_balance(run_dir: Path, step: int | None = None) -> pd.DataFrame:
    """Return largest/mean and smallest/mean expert load per layer at ``step`` (default: last)."""
    table = pd.read_csv(Path(run_dir) / "expert-load.csv")
    step = table.step.max() if step is None else step
    return table[table.step == step].reset_index(drop=True)


def baselines_on_eval_text(run_dir: Path, corpus_dir: Path, tokenizer_dir: Path) -> pd.DataFrame:
    """Return unigram and bigram cross-entropy on exactly the held-out text the run scores.

    The n-gram models are fitted on the run's own training tokens (every document of the
    train split, as packed for training) and scored on the validation blocks of each
    domain, split back into documents at EOS. Columns as
    :func:`moe_lib.data.baselines.ngram_baselines`: ``domain, model, nats_per_token, n_tokens``.
    """
    run_dir = Path(run_dir)
    run = pd.read_json(run_dir / "run.json", typ="series")
    recipe = recipe_for(run["recipe"], run["preset"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.eos_token_id
    train_docs = _split_documents(np.load(run_dir / "data" / "train-tokens.npy"), eos)
    blocks = eval_blocks(read_documents(Path(corpus_dir) / "validation.jsonl"), tokenizer, recipe.seq_len,
                         recipe.eval_tokens_per_domain)
    valid_docs, domains = [], []
    for domain, array in blocks.items():
        docs = _split_documents(array.reshape(-1), eos)
        valid_docs += docs
        domains += [domain] * len(docs)
    return ngram_baselines(train_docs, valid_docs, domains, vocab_size=len(tokenizer))


def final_comparison(run_dir: Path, baselines: pd.DataFrame) -> pd.DataFrame:
    """Return the last checkpoint's validation loss per domain beside the baselines (wide)."""
    curves = loss_curves(run_dir)
    last = curves[curves.step == curves.step.max()].set_index("domain").val_loss.rename("model")
    wide = baselines.pivot(index="domain", columns="model", values="nats_per_token")
    return wide.join(last).reset_index()
