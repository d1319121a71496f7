"""Router saturation through training, as the OLMoE paper defines it, and the distribution
over experts of chosen tokens at each checkpoint.

Saturation at checkpoint t, layer l: the mean over probe tokens of
|topk_t ∩ topk_final| / k, i.e. how much of the final router's choice is already made.
All checkpoints must be traces of one model family on the same probe tokens. Chunked traces
(``open_trace(path, chunks=...)``) are compared block by block (``analysis.chunked``), with
the same results.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from moe_lib.analysis.chunked import is_chunked, sum_blocks
from moe_lib.analysis.common import expert_ids, layer_expert_counts, set_overlap

_ALIGNED_COORDS = ("seq", "pos", "token_id")


def _side_by_side(checkpoints: Mapping[Hashable, xr.Dataset]) -> xr.Dataset:
    """Return one lazy Dataset holding checkpoint i's expert ids and token coordinates as
    ``<name>_<i>``, in the blocks of the first checkpoint, for block-by-block comparison."""
    items = list(checkpoints.values())
    first = items[0]
    chunks = first["expert_id"].chunksizes.get("token") if is_chunked(first) else None
    variables = {}
    for index, ds in enumerate(items):
        if ds.sizes["token"] != first.sizes["token"]:
            key = list(checkpoints)[index]
            raise ValueError(
                f"checkpoint {key!r}: coordinate 'seq' differs from checkpoint {list(checkpoints)[0]!r}; "
                "saturation needs every checkpoint traced on the same tokens"
            )
        for name in ("expert_id", *_ALIGNED_COORDS):
            array = ds[name].variable.to_base_variable()
            variables[f"{name}_{index}"] = array.chunk({"token": chunks}) if chunks else array.chunk()
    return xr.Dataset(variables, coords={"layer": first["layer"].values}, attrs=first.attrs)


def _router_saturation_chunked(checkpoints: Mapping[Hashable, xr.Dataset], final: Hashable) -> pd.DataFrame:
    """``router_saturation`` summed block by block over tokens; see its docstring."""
    keys = list(checkpoints)
    reference_index = keys.index(final)
    n_experts, top_k = int(checkpoints[final].attrs["n_experts"]), int(checkpoints[final].attrs["top_k"])

    def sums(block):
        def ids(i):
            return block[f"expert_id_{i}"].transpose("token", "layer", "slot").values.astype(np.int32)

        reference = ids(reference_index)
        out = {"mismatch": np.array([[int((block[f"{c}_{i}"].values != block[f"{c}_0"].values).sum())
                                      for c in _ALIGNED_COORDS] for i in range(len(keys))])}
        for i in range(len(keys)):
            here = ids(i)
            out[f"overlap_{i}"] = set_overlap(here, reference).sum(axis=0, dtype=np.int64)
            out[f"agree_{i}"] = (here[..., 0] == reference[..., 0]).sum(axis=0)
            out[f"inclusion_{i}"] = layer_expert_counts(here, n_experts)
        return out

    totals = sum_blocks(_side_by_side(checkpoints), sums)
    for i, coord_index in zip(*np.nonzero(totals["mismatch"])):
        raise ValueError(
            f"checkpoint {keys[i]!r}: coordinate {_ALIGNED_COORDS[coord_index]!r} differs from checkpoint "
            f"{keys[0]!r}; saturation needs every checkpoint traced on the same tokens"
        )
    n_tokens = checkpoints[final].sizes["token"]
    layers = checkpoints[final]["layer"].values
    reference_inclusion = totals[f"inclusion_{reference_index}"] / n_tokens
    return pd.concat([
        pd.DataFrame({
            "checkpoint": [key] * len(layers),
            "layer": layers,
            "topk_overlap": totals[f"overlap_{i}"] / n_tokens / top_k,
            "top1_agreement": totals[f"agree_{i}"] / n_tokens,
            "topk_overlap_chance": (totals[f"inclusion_{i}"] / n_tokens * reference_inclusion).sum(axis=1) / top_k,
            "n_tokens": n_tokens,
        })
        for i, key in enumerate(keys)
    ], ignore_index=True)


def _check_aligned(checkpoints: Mapping[Hashable, xr.Dataset]) -> None:
    """Raise unless every checkpoint trace holds the same tokens, layers and expert count."""
    items = list(checkpoints.items())
    if not items:
        raise ValueError("router saturation needs at least one checkpoint trace")
    ref_key, ref = items[0]
    for key, ds in items[1:]:
        for coord in ("seq", "pos", "token_id", "layer"):
            if ds.sizes.get("token") != ref.sizes.get("token") or not np.array_equal(
                ds[coord].values, ref[coord].values
            ):
                raise ValueError(
                    f"checkpoint {key!r}: coordinate {coord!r} differs from checkpoint "
                    f"{ref_key!r}; saturation needs every checkpoint traced on the same tokens"
                )
        for attr in ("n_experts", "top_k"):
            if ds.attrs[attr] != ref.attrs[attr]:
                raise ValueError(
                    f"checkpoint {key!r}: {attr}={ds.attrs[attr]!r} but checkpoint "
                    f"{ref_key!r} has {ref.attrs[attr]!r}"
                )


def router_saturation(
    checkpoints: Mapping[Hashable, xr.Dataset], final: Hashable | None = None
) -> pd.DataFrame:
    """Return per checkpoint and layer the top-k overlap and top-1 agreement with the final.

    Parameters
    ----------
    checkpoints : mapping of checkpoint key (step, training tokens, ...) to trace
        Traces of the same probe tokens, in training order.
    final : key, optional
        The reference checkpoint; default the last one of the mapping.

    Returns
    -------
    DataFrame
        Columns checkpoint, layer, topk_overlap (mean |topk_t ∩ topk_final| / k, 1 for the
        final itself), top1_agreement (share of tokens with the same top-1 expert),
        topk_overlap_chance (the overlap of independent draws with both checkpoints'
        observed loads: sum_e q_e q'_e / k), n_tokens.
    """
    chunked = any(is_chunked(ds) for ds in checkpoints.values())
    if not chunked:
        _check_aligned(checkpoints)
    final = list(checkpoints)[-1] if final is None else final
    if final not in checkpoints:
        raise KeyError(f"final checkpoint {final!r} is not among {list(checkpoints)}")
    if chunked:
        return _router_saturation_chunked(checkpoints, final)
    reference = expert_ids(checkpoints[final])
    n_tokens, _, top_k = reference.shape
    n_experts = int(checkpoints[final].attrs["n_experts"])
    reference_inclusion = layer_expert_counts(reference, n_experts) / n_tokens
    layers = checkpoints[final]["layer"].values
    rows = []
    for key, ds in checkpoints.items():
        ids = expert_ids(ds)
        inclusion = layer_expert_counts(ids, n_experts) / n_tokens
        rows.append(
            pd.DataFrame(
                {
                    "checkpoint": [key] * len(layers),
                    "layer": layers,
                    "topk_overlap": set_overlap(ids, reference).mean(axis=0) / top_k,
                    "top1_agreement": (ids[..., 0] == reference[..., 0]).mean(axis=0),
                    "topk_overlap_chance": (inclusion * reference_inclusion).sum(axis=1) / top_k,
                    "n_tokens": n_tokens,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def token_expert_distribution(
    checkpoints: Mapping[Hashable, xr.Dataset],
    token_ids: Sequence[int],
    n_slots: int | None = 1,
) -> pd.DataFrame:
    """Return, per checkpoint, token id and layer, the share of its occurrences per expert.

    Parameters
    ----------
    checkpoints : mapping of checkpoint key to trace
    token_ids : sequence of int
        The chosen tokens; each must occur in the traces.
    n_slots : int, optional
        1 (default) counts the top-1 expert; None counts every top-k slot.

    Returns
    -------
    DataFrame
        Columns checkpoint, token_id, token_str, layer, expert, n_assignments, share (sums to
        1 per checkpoint, token and layer); every expert appears, with zeros, so polar bars
        keep their angles.
    """
    _check_aligned(checkpoints)
    rows = []
    for key, ds in checkpoints.items():
        n_experts = int(ds.attrs["n_experts"])
        all_ids = np.asarray(ds["token_id"].values)
        ids = expert_ids(ds, n_slots)
        for token_id in token_ids:
            mask = all_ids == token_id
            if not mask.any():
                raise ValueError(f"checkpoint {key!r}: token_id {token_id} does not occur in the trace")
            counts = layer_expert_counts(ids[mask], n_experts)  # (layer, expert)
            token_str = str(ds["token_str"].values[np.argmax(mask)])
            rows.append(
                pd.DataFrame(
                    {
                        "checkpoint": [key] * counts.size,
                        "token_id": int(token_id),
                        "token_str": token_str,
                        "layer": np.repeat(ds["layer"].values, n_experts),
                        "expert": np.tile(np.arange(n_experts), counts.shape[0]),
                        "n_assignments": counts.ravel(),
                        "share": (counts / counts.sum(axis=1, keepdims=True)).ravel(),
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)
