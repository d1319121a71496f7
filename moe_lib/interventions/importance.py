"""Which experts matter: observational and causal scores of every expert, per document.

Two measurements over the same texts, kept per document so that every score can be
bootstrapped over documents (:mod:`moe_lib.interventions.importance_scores` turns them
into scores, intervals and agreement):

- observational, from one forward with hooks on each MoE layer's experts module: how
  many of a document's tokens route to each expert (``doc_n_routed``), the sum of their
  routing weights (``doc_weight_sum``), and the sum of weight x the norm of the expert's
  output (``doc_reap_sum``, the REAP criterion's numerator). The weight is the one the
  layer multiplies the expert's output by (after any renormalisation or scaling). The
  expert's output comes from the experts module itself, called as the model calls it,
  with the token's own ids and a weight of 1 on one slot and 0 on the others: no expert
  is re-implemented.
- causal, from the ablation grid of :mod:`moe_lib.interventions.ablation`: each document's
  next-token loss when one expert of one layer is removed (its slot dropped, the router
  untouched), with and without renormalising the remaining weights (``doc_nll``), and at
  baseline. Layers below the ablated one are computed once per batch (prefix reuse).

:func:`measure` runs both batch by batch; given a ``work_dir`` it keeps each finished
batch there, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from moe_lib.core.capture import HookSet, experts_argument_names, find_moe_layers
from moe_lib.interventions.ablation import Condition, encode_batches, next_token_score, run_grid
from moe_lib.interventions.lens import base_model
from moe_lib.models.families import family_of, n_experts, top_k

OBSERVATIONAL = ("doc_n_routed", "doc_weight_sum", "doc_reap_sum")
RENORMALIZE = (False, True)


class ExpertOutputRecorder(HookSet):
    """Forward pre-hooks on every experts module summing, per document and expert, the routes,
    their weights, and weight x the norm of the expert's output.

    Set :attr:`doc_of_token` before each forward: the document (0 .. ``n_docs`` - 1) of
    every flattened (row, position) token, -1 for padding.
    """

    def __init__(self, model: torch.nn.Module, n_docs: int):
        super().__init__()
        self.model = model
        self.family = family_of(model.config)
        self.layers = find_moe_layers(model, self.family)
        self.n_experts = n_experts(model.config)
        # (variable, layer, doc, expert), float64: sums over thousands of tokens stay exact enough
        self.sums = torch.zeros(len(OBSERVATIONAL), len(self.layers), n_docs, self.n_experts, dtype=torch.float64)
        self.doc_of_token: torch.Tensor | None = None
        self._inside = False

    def _expert_output_norms(self, module, hidden, ids, weights) -> torch.Tensor:
        """Return (token, slot) the norm of the output of the expert in each slot, unweighted."""
        norms = []
        self._inside = True  # our own calls below must not be recorded again
        try:
            for slot in range(ids.shape[-1]):
                only_this_slot = torch.zeros_like(weights)
                only_this_slot[:, slot] = 1
                norms.append(module(hidden, ids, only_this_slot).float().norm(dim=-1))
        finally:
            self._inside = False
        return torch.stack(norms, dim=-1)

    def _on_experts(self, index: int, names: list[str]):
        def hook(module, args, kwargs):
            if self._inside:
                return None
            bound = dict(zip(names, args)) | kwargs
            hidden, ids, weights = bound[names[0]], bound[names[1]], bound[names[2]]
            docs = self.doc_of_token
            if docs is None or docs.shape[0] != ids.shape[0]:
                raise RuntimeError(f"layer {self.layers[index]}: set doc_of_token to the {ids.shape[0]} tokens "
                                   "of the forward before running it")
            with torch.no_grad():
                norms = self._expert_output_norms(module, hidden, ids, weights)
                kept = (docs >= 0).to(ids.device)
                flat = (docs.to(ids.device)[kept, None] * self.n_experts + ids[kept]).reshape(-1).cpu()
                w = weights[kept].float()
                for variable, values in enumerate((torch.ones_like(w), w, w * norms[kept])):
                    self.sums[variable, index].view(-1).index_add_(0, flat, values.reshape(-1).double().cpu())

        return hook

    def _register(self) -> None:
        for index, layer in enumerate(self.layers):
            experts = self.model.get_submodule(self.family.experts.format(layer=layer))
            self._handles.append(experts.register_forward_pre_hook(
                self._on_experts(index, experts_argument_names(experts)), with_kwargs=True))


def row_of_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the batch row of each flattened (row, position) token, -1 for padding."""
    rows = torch.arange(attention_mask.shape[0])[:, None].expand_as(attention_mask)
    return torch.where(attention_mask.bool().cpu(), rows, -1).reshape(-1)


def observational_sums(model, batch: dict) -> dict[str, np.ndarray]:
    """Return the sums of :data:`OBSERVATIONAL` over one batch, each (row, layer, expert).

    Runs the decoder only (no unembedding): the experts see what they see in a full forward.
    """
    device = next(model.parameters()).device
    with ExpertOutputRecorder(model, len(batch["item"])) as recorder, torch.inference_mode():
        recorder.doc_of_token = row_of_token(batch["attention_mask"])
        base_model(model)(input_ids=batch["input_ids"].to(device),
                          attention_mask=batch["attention_mask"].to(device), use_cache=False)
    return dict(zip(OBSERVATIONAL, recorder.sums.transpose(1, 2).numpy()))  # each (row, layer, expert)


def single_expert_conditions(moe_layers: Sequence[int], n_experts: int) -> list[Condition]:
    """Return the baseline, then every (layer, expert) removed alone by dropping its slot,
    without and with renormalising: ``2 * len(moe_layers) * n_experts + 1`` conditions."""
    conditions = [Condition()]
    for layer in moe_layers:
        for expert in range(n_experts):
            conditions += [Condition.removing({layer: [expert]}, renormalize=r) for r in RENORMALIZE]
    return conditions


def causal_losses(model, batch: dict, conditions: Sequence[Condition]) -> dict[str, np.ndarray]:
    """Return one batch's ``doc_nll`` (row, layer, expert, renormalize), ``doc_baseline_nll``
    and ``doc_n_predicted`` (row): next-token losses in nats summed over each text."""
    layers = find_moe_layers(model, family_of(model.config))
    rows = run_grid(model, [batch], conditions, next_token_score, progress=False)
    n_rows = len(batch["item"])
    nll = np.full((n_rows, len(layers), n_experts(model.config), len(RENORMALIZE)), np.nan)
    baseline, n_predicted = np.full(n_rows, np.nan), np.full(n_rows, np.nan)
    row_of_doc = {int(doc): row for row, doc in enumerate(batch["item"])}
    by_name = {c.name: c for c in conditions}
    for name, part in rows.groupby("condition", sort=False):
        condition = by_name[name]
        docs = part["item"].map(row_of_doc).to_numpy()
        if condition.is_baseline:
            baseline[docs] = part["nll_sum"].to_numpy()
            n_predicted[docs] = part["n_predicted"].to_numpy()
            continue
        (layer, (expert,)), = condition.experts_by_layer().items()
        nll[docs, layers.index(layer), expert, RENORMALIZE.index(condition.renormalize)] = part["nll_sum"].to_numpy()
    return {"doc_nll": nll, "doc_baseline_nll": baseline, "doc_n_predicted": n_predicted}


class BatchFolder:
    """Finished batches of a long run, one ``.npz`` each, written atomically, beside the
    identity they were computed for: a folder made for anything else is refused."""

    def __init__(self, path: Path, identity: dict):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.path / "identity.json"
        text = json.dumps(identity, sort_keys=True, default=str)
        if marker.exists() and marker.read_text() != text:
            raise ValueError(f"{self.path}: holds batches of another run (model, texts or settings differ); "
                             "remove it to start afresh")
        marker.write_text(text)

    def _file(self, index: int) -> Path:
        return self.path / f"batch-{index:05d}.npz"

    def get(self, index: int) -> dict[str, np.ndarray] | None:
        file = self._file(index)
        return dict(np.load(file)) if file.exists() else None

    def put(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        tmp = self.path / f".batch-{index:05d}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self._file(index))


def _place(total: dict[str, np.ndarray], part: dict[str, np.ndarray], n_docs: int) -> None:
    """Write a batch's per-row arrays into the per-document totals, at the rows' documents."""
    docs = part["docs"]
    for name, values in part.items():
        if name == "docs":
            continue
        if name not in total:
            total[name] = np.full((n_docs, *values.shape[1:]), np.nan)
        total[name][docs] = values


def measure(
    model, tokenizer, texts: Sequence[str], *, causal: bool = True, batch_size: int = 8, max_length: int = 256,
    work_dir: Path | None = None, work_identity: dict | None = None, progress: bool = True,
) -> xr.Dataset:
    """Return the per-document measurements of every expert of every MoE layer.

    Parameters
    ----------
    texts : the documents; each keeps its first ``max_length`` tokens.
    causal : also run the single-expert ablations (2 x layers x experts conditions).
    work_dir, work_identity : keep finished batches in ``work_dir`` (see :class:`BatchFolder`)
        and skip them when run again for the same ``work_identity``.

    Returns
    -------
    xarray.Dataset
        ``doc_n_routed``, ``doc_weight_sum``, ``doc_reap_sum`` (doc, layer, expert) and
        ``doc_n_tokens`` (doc); with ``causal``, ``doc_nll`` (doc, layer, expert,
        renormalize), ``doc_baseline_nll`` and ``doc_n_predicted`` (doc), in nats summed over
        each document's predicted tokens. ``layer`` holds absolute decoder-layer indices.
    """
    family = family_of(model.config)
    layers = find_moe_layers(model, family)
    n_docs, n_exp = len(texts), n_experts(model.config)
    batches = encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length)
    conditions = single_expert_conditions(layers, n_exp) if causal else []
    folder = BatchFolder(work_dir, work_identity or {}) if work_dir is not None else None
    total: dict[str, np.ndarray] = {}
    bar = tqdm(batches, desc="expert importance", unit="batch", disable=not progress)
    for index, batch in enumerate(bar):
        part = folder.get(index) if folder else None
        if part is None:
            part = {"docs": np.asarray(batch["item"]), **observational_sums(model, batch)}
            if causal:
                part |= causal_losses(model, batch, conditions)
            if folder:
                folder.put(index, part)
        _place(total, part, n_docs)
    lengths = np.zeros(n_docs, dtype=np.int64)
    for batch in batches:
        lengths[np.asarray(batch["item"])] = batch["lengths"]
    coords = {"doc": np.arange(n_docs), "layer": np.asarray(layers), "expert": np.arange(n_exp)}
    data = {name: (("doc", "layer", "expert"), total[name]) for name in OBSERVATIONAL}
    data["doc_n_tokens"] = (("doc",), lengths)
    if causal:
        coords["renormalize"] = np.asarray(RENORMALIZE)
        data["doc_nll"] = (("doc", "layer", "expert", "renormalize"), total["doc_nll"])
        data["doc_baseline_nll"] = (("doc",), total["doc_baseline_nll"])
        data["doc_n_predicted"] = (("doc",), total["doc_n_predicted"].astype(np.int64))
    return xr.Dataset(data, coords=coords, attrs={"family": family.model_type, "top_k": top_k(model.config),
                                                  "n_experts": n_exp, "max_length": max_length})


IMPORTANCE_VERSION = 1  # bump when what measure() or importance_scores() computes changes: part of every key


def importance_identity(model, *, name: str, texts: Sequence[str], labels: dict | None = None, max_length: int,
                        causal: bool, n_boot: int, seed: int, revision: str | None = None) -> dict:
    """Return what keys an importance Dataset: the model's identity (the sha256 of its
    weights where it has no revision), its dtype, the texts' fingerprint and the settings."""
    from moe_lib.core.cache import fingerprint
    from moe_lib.models.registry import model_identity

    return {
        **model_identity(model, name=name, revision=revision),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "texts": fingerprint(texts, labels),
        "max_length": max_length,
        "causal": causal,
        "n_boot": n_boot,
        "seed": seed,
        "importance_version": IMPORTANCE_VERSION,
    }


def expert_importance(model, tokenizer, texts: Sequence[str], *, causal: bool = True, batch_size: int = 8,
                      max_length: int = 256, n_boot: int = 1000, seed: int = 0, work_dir: Path | None = None,
                      work_identity: dict | None = None, progress: bool = True) -> xr.Dataset:
    """Return every expert's observational and causal scores with intervals and their agreement:
    :func:`measure` then :func:`~moe_lib.interventions.importance_scores.importance_scores`."""
    from moe_lib.interventions.importance_scores import importance_scores

    measured = measure(model, tokenizer, texts, causal=causal, batch_size=batch_size, max_length=max_length,
                       work_dir=work_dir, work_identity=work_identity, progress=progress)
    return importance_scores(measured, n_boot=n_boot, seed=seed)
