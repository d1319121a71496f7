"""Training the project's own MoEs: seeded, checkpointed, resumable to the same bits.

One run lives in one directory (``datasets/saved-models/<recipe>-<preset>/`` by default)::

    run.json                 recipe, preset, seed, recipe hash, data fingerprint
    data/train-tokens.npy    the training corpus, tokenized once
    data/order.npy           the seeded order of blocks, one row per optimizer step
    checkpoints/step-XXXXXX/ model + optimizer/RNG/data position (see moe_lib.models.checkpoints)
    metrics.csv              validation loss per domain at each checkpoint
    expert-load.csv          expert load per layer at each checkpoint

Step ``s`` always trains on the blocks ``order[s]``, the learning rate is a pure function of
the step and the optimizer state is saved whole, so a run resumed from any checkpoint ends
with the same weights as one never interrupted (same seed, same machine and threads).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from moe_lib.models import checkpoints, cross_layer, standard
from moe_lib.training.probe_traces import model_name
from moe_lib.training.training_data import (
    corpus_fingerprint,
    eval_blocks,
    read_documents,
    tokenize_documents,
)

RECIPES = {standard.RECIPE: standard, cross_layer.RECIPE: cross_layer}
MODEL_CLASSES = {standard.RECIPE: standard.OlmoeForCausalLM, cross_layer.RECIPE: cross_layer.CrossLayerForCausalLM}


def environment() -> dict:
    """Return what a run's bits depend on beyond recipe and seed: torch's thread count and
    the versions of Python and the libraries. A run is bitwise reproducible only on the same
    machine with the same threads and versions (reductions split over threads differently)."""
    import platform

    import transformers

    from moe_lib import __version__

    return {
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__, "moe_lib": __version__},
        "machine": platform.machine(),
    }


def recipe_for(recipe_name: str, preset: str, **overrides):
    """Return the hyperparameters of ``preset`` for the named recipe."""
    if recipe_name not in RECIPES:
        raise ValueError(f"unknown recipe {recipe_name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[recipe_name].preset(preset, **overrides)


def learning_rate(step: int, recipe) -> float:
    """Return the learning rate at ``step``: linear warmup, then cosine down to min_lr_ratio."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.n_steps - recipe.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def checkpoint_steps(n_steps: int, n_checkpoints: int) -> list[int]:
    """Return about ``n_checkpoints`` steps, log-spaced from ~1 % of ``n_steps`` to the last."""
    first = max(1, round(0.01 * n_steps))
    steps = np.unique(np.round(np.geomspace(first, n_steps, n_checkpoints)).astype(int))
    return [int(s) for s in steps]


def block_order(n_blocks: int, n_steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Return ``(step, batch)`` block indices: seeded permutations of all blocks, concatenated.

    Every block is seen once per epoch; a new epoch starts a new permutation.
    """
    rng = np.random.default_rng(seed)
    needed = n_steps * batch_size
    order = np.concatenate([rng.permutation(n_blocks) for _ in range(math.ceil(needed / n_blocks))])
    return order[:needed].reshape(n_steps, batch_size)


def make_optimizer(model, recipe) -> torch.optim.AdamW:
    """Return AdamW with weight decay on matrices only (not norms, biases, router offsets' scale)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        # Norm gains and biases are 1-D; the tied embedding is decayed like any matrix.
        (decay if param.ndim >= 2 and not name.endswith(".offset") else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


def _autocast(recipe, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16)


def _losses(model, recipe_module, recipe, blocks: torch.Tensor):
    outputs = model(input_ids=blocks, output_router_logits=True)
    logits = outputs.logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1))
    aux = recipe_module.auxiliary_losses(model, outputs, recipe)
    return ce, aux


@torch.no_grad()
def evaluate(model, recipe, blocks_by_domain: dict[str, np.ndarray], batch_size: int = 16):
    """Return per-domain validation loss and per-layer expert counts of ``model``.

    Returns
    -------
    (pandas.DataFrame, numpy.ndarray)
        Columns ``domain``, ``val_loss`` (mean nats per predicted token), ``n_tokens``, with
        a row ``domain="all"`` pooling every token; and top-k assignment counts
        ``(layer, expert)`` over the same tokens.
    """
    model.eval()
    device = next(model.parameters()).device
    rows, counts = [], None
    for domain, blocks in blocks_by_domain.items():
        total, n = 0.0, 0
        for start in range(0, len(blocks), batch_size):
            batch = torch.as_tensor(blocks[start : start + batch_size], dtype=torch.long, device=device)
            with _autocast(recipe, device):
                out = model(input_ids=batch, output_router_logits=True)
            logits = out.logits[:, :-1].float()
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            ).item()
            n += batch[:, 1:].numel()
            # Both recipes score softmax-then-top-k, so the k largest logits are the chosen experts.
            chosen = [x.topk(recipe.top_k, dim=-1).indices.reshape(-1).cpu().numpy() for x in out.router_logits]
            layer_counts = np.stack([np.bincount(c, minlength=recipe.n_experts) for c in chosen])  # (layer, expert)
            counts = layer_counts if counts is None else counts + layer_counts
        rows.append({"domain": domain, "val_loss": total / n, "n_tokens": n})
    table = pd.DataFrame(rows)
    pooled = (table.val_loss * table.n_tokens).sum() / table.n_tokens.sum()
    table = pd.concat([table, pd.DataFrame([{"domain": "all", "val_loss": pooled, "n_tokens": table.n_tokens.sum()}])])
    model.train()
    return table.reset_index(drop=True), counts


def expert_load_table(counts: np.ndarray) -> pd.DataFrame:
    """Return per-layer balance from ``(layer, expert)`` counts: largest/mean, smallest/mean."""
    mean = counts.mean(1)
    return pd.DataFrame(
        {
            "layer": np.arange(len(counts)),
            "max_over_mean": counts.max(1) / mean,
            "min_over_mean": counts.min(1) / mean,
            # "Dead": under a tenth of its fair share of the layer's assignments.
            "n_dead": (counts < 0.1 * mean[:, None]).sum(1),
        }
    )


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _append_rows(path: Path, rows: pd.DataFrame, step: int) -> None:
    """Rewrite ``path`` keeping rows of earlier steps only, then adding ``rows``: reruns never duplicate."""
    old = pd.read_csv(path) if path.exists() else None
    table = rows if old is None else pd.concat([old[old.step < step], rows])
    _write_csv(path, table)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def prepare_data(run_dir: Path, corpus_dir: Path, tokenizer, recipe, seed: int):
    """Return the training tokens and block order, tokenizing once and persisting both.

    A run directory whose data were made from another corpus or tokenizer is refused, not
    silently retrained on different text.
    """
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = corpus_fingerprint(corpus_dir / "train.jsonl", tokenizer)
    meta_path = data_dir / "data.json"
    tokens_path, order_path = data_dir / "train-tokens.npy", data_dir / "order.npy"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["fingerprint"] != fingerprint or meta["seed"] != seed:
            raise ValueError(
                f"{meta_path}: data made from fingerprint {meta['fingerprint']} seed {meta['seed']}, "
                f"this run has {fingerprint} seed {seed}; use another --out"
            )
        order = np.load(order_path)
        if order.shape != (recipe.n_steps, recipe.batch_size):
            raise ValueError(f"{order_path}: block order of shape {order.shape}, this recipe needs "
                             f"{(recipe.n_steps, recipe.batch_size)}; use another --out")
        return np.load(tokens_path), order
    tokens = tokenize_documents(read_documents(corpus_dir / "train.jsonl"), tokenizer)
    n_blocks = len(tokens) // recipe.seq_len
    order = block_order(n_blocks, recipe.n_steps, recipe.batch_size, seed)
    for path, array in ((tokens_path, tokens), (order_path, order)):
        with open(path.with_name(path.name + ".tmp"), "wb") as f:
            np.save(f, array)
        os.replace(path.with_name(path.name + ".tmp"), path)
    meta = {"fingerprint": fingerprint, "seed": seed, "n_tokens": int(len(tokens)), "n_blocks": n_blocks}
    checkpoints.write_json_atomic(meta_path, meta)
    return tokens, order


def train(
    recipe_name: str,
    preset: str = "default",
    *,
    out_dir: Path | None = None,
    seed: int = 0,
    corpus_dir: Path = Path("datasets/corpus"),
    tokenizer_dir: Path = Path("datasets/tokenizer"),
    stop_after: int | None = None,
    on_checkpoint=None,
    device: str = "cpu",
    progress: bool = True,
    **overrides,
) -> Path:
    """Train (or resume) a model and return its run directory.

    Parameters
    ----------
    recipe_name
        ``"standard"`` or ``"cross-layer"``.
    preset
        ``"tiny"``, ``"default"`` or ``"gpu"``; ``overrides`` replace single fields.
    out_dir
        Run directory; default ``datasets/saved-models/<recipe>-<preset>`` (``-seed<N>`` added
        for a seed other than 0). If it holds
        checkpoints, training resumes from the last one (which must verify).
    stop_after
        Stop once the checkpoint at or after this step is written, as if killed there
        (for resume tests).
    device
        Where to train, e.g. ``"cuda"`` for the gpu preset. Exact resumption is checked
        on the CPU only.
    on_checkpoint
        Called as ``on_checkpoint(checkpoint_dir, model, tokenizer, is_final)`` after each
        checkpoint, e.g. to collect a routing trace.
    """
    recipe_module = RECIPES[recipe_name]
    device = torch.device(device)
    recipe = recipe_for(recipe_name, preset, **overrides)
    run_dir = Path(out_dir or Path("datasets/saved-models") / model_name(recipe_name, preset, seed))
    ckpt_root = run_dir / "checkpoints"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    run_info = {
        "recipe": recipe_name, "preset": preset, "seed": seed, "recipe_hash": recipe.hash(),
        "hyperparameters": asdict(recipe), **environment(),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "run.json").exists():
        previous = json.loads((run_dir / "run.json").read_text())
        if previous["recipe_hash"] != run_info["recipe_hash"] or previous["seed"] != seed:
            raise ValueError(f"{run_dir / 'run.json'}: another recipe or seed was trained here; use another --out")
    checkpoints.write_json_atomic(run_dir / "run.json", run_info)
    tokens, order = prepare_data(run_dir, corpus_dir, tokenizer, recipe, seed)
    val_blocks = eval_blocks(read_documents(corpus_dir / "validation.jsonl"), tokenizer, recipe.seq_len,
                             recipe.eval_tokens_per_domain)
    special_ids = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}

    done = checkpoints.list_steps(ckpt_root)
    if done:
        last = checkpoints.step_dir(ckpt_root, done[-1])
        state = checkpoints.verify(last)  # raises, naming the file, if corrupt
        model = checkpoints.load_model(last, MODEL_CLASSES[recipe_name]).to(device)
        optimizer = make_optimizer(model, recipe)
        trainer_state = checkpoints.load_trainer_state(last)
        optimizer.load_state_dict(trainer_state["optimizer"])
        _set_rng_state(trainer_state["rng"])
        step, elapsed = state["step"], state["elapsed_s"]
    else:
        torch.manual_seed(seed)
        model = recipe_module.build_model(recipe, len(tokenizer), special_ids).to(device)
        optimizer = make_optimizer(model, recipe)
        step, elapsed = 0, 0.0
    model.train()
    schedule = checkpoint_steps(recipe.n_steps, recipe.n_checkpoints)
    tokens_per_step = recipe.batch_size * recipe.seq_len
    bar = tqdm(total=recipe.n_steps, initial=step, disable=not progress, desc=f"{recipe_name}-{preset}",
               unit="step", dynamic_ncols=True)
    recent = []
    while step < recipe.n_steps:
        started = time.perf_counter()
        starts = order[step] * recipe.seq_len
        blocks = torch.as_tensor(np.stack([tokens[s : s + recipe.seq_len] for s in starts]), dtype=torch.long,
                                 device=device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        with _autocast(recipe, device):
            ce, aux = _losses(model, recipe_module, recipe, blocks)
        loss = ce + sum(aux.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        step += 1
        step_time = time.perf_counter() - started
        elapsed += step_time
        recent.append(ce.item())
        bar.update(1)
        bar.set_postfix(loss=f"{ce.item():.3f}", tok_s=f"{tokens_per_step / step_time:,.0f}")
        if step in schedule:
            table, counts = evaluate(model, recipe, val_blocks)
            state = {
                "step": step, "tokens_seen": step * tokens_per_step, "elapsed_s": elapsed, "seed": seed,
                "recipe": recipe_name, "preset": preset, "recipe_hash": recipe.hash(),
                "train_loss": float(np.mean(recent)), **environment(),
            }
            path = checkpoints.save(ckpt_root, step, model,
                                    {"optimizer": optimizer.state_dict(), "rng": _rng_state(), "step": step}, state,
                                    tokenizer=tokenizer)
            table.insert(0, "step", step)
            table.insert(1, "tokens_seen", state["tokens_seen"])
            table["train_loss"], table["elapsed_s"] = state["train_loss"], elapsed
            _append_rows(run_dir / "metrics.csv", table, step)
            load = expert_load_table(counts)
            load.insert(0, "step", step)
            _append_rows(run_dir / "expert-load.csv", load, step)
            bar.write(f"step {step}: val {table.val_loss.iloc[-1]:.3f}, max/mean load "
                      f"{', '.join(f'{x:.2f}' for x in load.max_over_mean)}")
            recent = []
            if on_checkpoint is not None:
                on_checkpoint(path, model, tokenizer, step == recipe.n_steps)
            if stop_after is not None and step >= stop_after:
                break
    bar.close()
    return run_dir
