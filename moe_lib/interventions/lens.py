"""The logit lens: the model's own final norm and unembedding read off every layer's residual.

The residual stream after decoder layer ``l`` is the output of that layer, kept by a
forward hook (not ``output_hidden_states``, whose last entry is already normed in most
families). Passing it through the model's final norm module and its output embedding (and
the family's logit scaling, where the config has one) gives the distribution the model
would predict if it stopped there; after the last layer it is the model's own output.

Also here, because the ablation grid needs them too: where the decoder stack, its final
norm and its unembedding live in a model, found through the family table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from moe_lib.interventions.removal import ablate
from moe_lib.models.families import family_of

# Rows x vocabulary entries unembedded at once: bounds the float32 logits to about 1 GiB.
_LOGITS_BUDGET = 1 << 28


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """Return the decoder (embedding, layers, final norm) inside a causal LM."""
    return model.get_submodule(family_of(model.config).layers.rsplit(".", 1)[0])


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """Return the model's decoder layers, dense and MoE, in order."""
    return model.get_submodule(family_of(model.config).layers)


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Return the norm the decoder applies to the last layer's output."""
    base = base_model(model)
    if not hasattr(base, "norm"):
        raise AttributeError(f"{type(base).__name__} has no final 'norm' module; the lens needs one")
    return base.norm


def unembed(model: torch.nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """Return float32 logits (..., vocab) of already-normed hidden states (..., hidden)."""
    logits = model.get_output_embeddings()(normed).float()
    # Granite divides its logits by config.logits_scaling after the unembedding.
    scaling = getattr(model.config, "logits_scaling", None)
    return logits / scaling if scaling else logits


def lens_logits(model: torch.nn.Module, residual: torch.Tensor) -> torch.Tensor:
    """Return float32 logits (..., vocab) read off a residual stream (..., hidden)."""
    return unembed(model, final_norm(model)(residual))


class ResidualStream:
    """Context manager keeping every decoder layer's output: the residual after that layer."""

    def __init__(self, model: torch.nn.Module):
        self.layers = decoder_layers(model)
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles = []

    def _keep(self, layer: int):
        def hook(module, args, output):
            self.outputs[layer] = (output[0] if isinstance(output, tuple) else output).detach()

        return hook

    def __enter__(self) -> ResidualStream:
        self._handles = [layer.register_forward_hook(self._keep(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def target_ranks(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rank, logprob) of each row's target: rank 0 = the most likely token.

    Ties count in the target's favour (only strictly larger logits rank above it).
    """
    logprobs = logits.float().log_softmax(dim=-1)
    target_logprob = logprobs.gather(-1, targets[:, None])
    return (logprobs > target_logprob).sum(-1), target_logprob[:, 0]


def lens_batch(
    model: torch.nn.Module,
    batch: dict,
    *,
    answer_ids: Sequence[int] | None = None,
    candidates: Sequence[int] | None = None,
    ablation: dict | None = None,
) -> pd.DataFrame:
    """Return the lens on one batch: per (item, pos, layer), the correct token's rank and prob.

    Parameters
    ----------
    batch : a batch of :func:`moe_lib.interventions.ablation.encode_batches` (``input_ids``,
        ``attention_mask``, ``lengths``, ``item``).
    answer_ids : per item (indexed by ``batch["item"]``), the correct token after the last
        position (the answer letter). None: every position's next token is its target.
    candidates : token ids competing with the answer (the four letters); adds
        ``candidate_rank``, the answer's rank among them (0 = the model would pick it).
    ablation : keyword arguments of :func:`moe_lib.interventions.removal.ablate` to run under.

    Returns
    -------
    pandas.DataFrame
        ``item``, ``pos``, ``layer`` (absolute decoder-layer index), ``target_id``, ``rank``
        (over the whole vocabulary), ``prob``, ``logprob`` (natural log), [``candidate_rank``].
    """
    input_ids, lengths, items = batch["input_ids"], batch["lengths"], batch["item"]
    device = next(model.parameters()).device
    if answer_ids is not None:
        rows = torch.arange(len(lengths))
        positions = torch.as_tensor(lengths) - 1
        targets = torch.as_tensor([int(answer_ids[int(i)]) for i in items])
    else:
        rows = torch.cat([torch.full((int(n) - 1,), r) for r, n in enumerate(lengths)])
        positions = torch.cat([torch.arange(int(n) - 1) for n in lengths])
        targets = input_ids[rows, positions + 1]
    intervention = ablate(model, **ablation) if ablation else contextlib.nullcontext()
    with torch.inference_mode():
        with ResidualStream(model) as stream, intervention:
            base_model(model)(
                input_ids=input_ids.to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False
            )
        frames = []
        chunk = max(1, _LOGITS_BUDGET // int(model.config.vocab_size))
        for layer, residual in sorted(stream.outputs.items()):
            for start in range(0, len(rows), chunk):
                sel = slice(start, start + chunk)
                target = targets[sel].to(device)
                logits = lens_logits(model, residual[rows[sel].to(device), positions[sel].to(device)])
                rank, logprob = target_ranks(logits, target)
                frame = {
                    "item": np.asarray(items)[rows[sel].numpy()],
                    "pos": positions[sel].numpy(),
                    "layer": layer,
                    "target_id": targets[sel].numpy(),
                    "rank": rank.cpu().numpy(),
                    "logprob": logprob.cpu().numpy(),
                }
                if candidates is not None:
                    competing = logits[:, list(candidates)]
                    answer = logits.gather(-1, target[:, None])
                    frame["candidate_rank"] = (competing > answer).sum(-1).cpu().numpy()
                frames.append(pd.DataFrame(frame))
    table = pd.concat(frames, ignore_index=True)
    table["prob"] = np.exp(table["logprob"])
    return table


def logit_lens(model: torch.nn.Module, batches: Iterable[dict], **kwargs) -> pd.DataFrame:
    """Return :func:`lens_batch` over every batch, one tidy table (same keyword arguments)."""
    return pd.concat([lens_batch(model, batch, **kwargs) for batch in batches], ignore_index=True)


def summarize_lens(lens: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Return per layer (and ``by`` columns): mean prob and logprob, median rank, top-1 share.

    ``top1`` is the share of rows where the correct token ranks first over the vocabulary;
    with ``candidate_rank`` present, ``candidate_top1`` is the share where it beats the
    other candidates (the lens's accuracy on multiple choice).
    """
    keys = [*by, "layer"]
    grouped = lens.assign(top1=lens["rank"] == 0).groupby(keys, sort=True)
    summary = grouped.agg(
        n=("rank", "size"),
        prob=("prob", "mean"),
        logprob=("logprob", "mean"),
        median_rank=("rank", "median"),
        top1=("top1", "mean"),
    )
    if "candidate_rank" in lens:
        summary["candidate_top1"] = grouped["candidate_rank"].agg(lambda r: float((r == 0).mean()))
    return summary.reset_index()


def lens_difference(
    ablated: pd.DataFrame, baseline: pd.DataFrame, keys: Sequence[str] = ("item", "pos", "layer")
) -> pd.DataFrame:
    """Return the ablated lens minus the baseline lens, row by row on ``keys``.

    Columns: ``keys``, ``target_id``, and for each of ``prob``, ``logprob``, ``rank`` the
    ablated value, the baseline value (``_baseline``) and their difference (``delta_``).
    """
    keys = list(keys)
    values = ["prob", "logprob", "rank"]
    merged = ablated[[*keys, "target_id", *values]].merge(
        baseline[[*keys, "target_id", *values]],
        on=[*keys, "target_id"],
        suffixes=("", "_baseline"),
        validate="one_to_one",
    )
    if len(merged) != len(ablated) or len(merged) != len(baseline):
        raise ValueError(
            f"lens tables do not match on {keys}: {len(ablated)} ablated rows, {len(baseline)} baseline, "
            f"{len(merged)} in common"
        )
    for value in values:
        merged[f"delta_{value}"] = merged[value] - merged[f"{value}_baseline"]
    return merged
