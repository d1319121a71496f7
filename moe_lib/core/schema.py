"""The routing-trace schema: one vocabulary from hook to figure.

A trace is an ``xarray.Dataset`` with these dims:

- ``token``: every non-padding token of the dataset, flattened in reading order;
- ``layer``: MoE layers only, its coordinate is the absolute decoder-layer index;
- ``slot``: rank within the top-k, 0 = largest weight;
- ``expert``: only for the optional full router scores.

and these variables:

- ``expert_id(token, layer, slot)`` int16: the experts the layer sent the token to;
- ``weight(token, layer, slot)`` float32: the weight the layer multiplied each expert's
  output by, after any normalisation or scaling;
- ``router_logits(token, layer, expert)`` float16, optional: raw router scores, before
  softmax or sigmoid;
- ``shared_gate(token, layer)`` float32, optional: the shared expert's gate where a family
  has one (Qwen2-MoE's sigmoid gate);
- ``predicted_id(token)`` int32, optional: the argmax of the model's next-token logits at
  the token, from the same forward pass; its trace has a ``vocab_size`` attr.

Token coords: ``seq`` (index of the text), ``pos`` (position in it), ``token_id``,
``token_str`` and any sample labels (``meaning``, ``domain``, ``is_target``, ...).
Attrs hold provenance only, as JSON-native values.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

# Bump on any change of dims, variables, dtypes or attrs meaning: cache keys include it,
# so every store written under an older schema is rebuilt rather than misread.
SCHEMA_VERSION = 1

TOKEN, LAYER, SLOT, EXPERT = "token", "layer", "slot", "expert"

EXPERT_ID_DTYPE = np.int16
# -1 marks "no expert": never a valid id, so int16 fill cannot mask expert 0.
EXPERT_ID_FILL = -1

REQUIRED_VARS = {"expert_id": (TOKEN, LAYER, SLOT), "weight": (TOKEN, LAYER, SLOT)}
OPTIONAL_VARS = {
    "router_logits": (TOKEN, LAYER, EXPERT),
    "shared_gate": (TOKEN, LAYER),
    "predicted_id": (TOKEN,),
}
PREDICTED_ID_DTYPE = np.int32
REQUIRED_TOKEN_COORDS = ("seq", "pos", "token_id", "token_str")
REQUIRED_ATTRS = ("model", "family", "scoring", "top_k", "n_experts", "schema_version")


class TraceSchemaError(ValueError):
    """A Dataset that does not follow the routing-trace schema."""


def check_trace(ds: xr.Dataset, where: str = "trace") -> xr.Dataset:
    """Return ``ds`` unchanged if it follows the schema, else raise naming what is wrong.

    Checks dims, dtypes, coords and attrs, not values (values are checked against the
    model by the capture tests), except that predicted ids must be token ids of the
    model's vocabulary: a small (token,) array, cheap to read.
    """
    for name, dims in REQUIRED_VARS.items():
        if name not in ds:
            raise TraceSchemaError(f"{where}: missing variable {name!r}; has {sorted(ds.data_vars)}")
        if ds[name].dims != dims:
            raise TraceSchemaError(f"{where}: {name} has dims {ds[name].dims}, expected {dims}")
    for name, dims in OPTIONAL_VARS.items():
        if name in ds and ds[name].dims != dims:
            raise TraceSchemaError(f"{where}: {name} has dims {ds[name].dims}, expected {dims}")
    if ds["expert_id"].dtype != EXPERT_ID_DTYPE:
        raise TraceSchemaError(f"{where}: expert_id has dtype {ds['expert_id'].dtype}, expected int16")
    for coord in REQUIRED_TOKEN_COORDS:
        if coord not in ds.coords or ds[coord].dims != (TOKEN,):
            raise TraceSchemaError(f"{where}: missing token coordinate {coord!r}")
    if LAYER not in ds.coords:
        raise TraceSchemaError(f"{where}: missing layer coordinate (absolute layer indices)")
    for attr in REQUIRED_ATTRS:
        if attr not in ds.attrs:
            raise TraceSchemaError(f"{where}: missing attribute {attr!r}")
    if ds.attrs["schema_version"] != SCHEMA_VERSION:
        raise TraceSchemaError(
            f"{where}: schema_version {ds.attrs['schema_version']!r}, this moe_lib reads {SCHEMA_VERSION}"
        )
    if ds.sizes[SLOT] != ds.attrs["top_k"]:
        raise TraceSchemaError(f"{where}: {ds.sizes[SLOT]} slots but top_k={ds.attrs['top_k']}")
    if "predicted_id" in ds:
        _check_predicted_ids(ds, where)
    return ds


def _check_predicted_ids(ds: xr.Dataset, where: str) -> None:
    """Raise unless ``predicted_id`` is int32 and within ``[0, vocab_size)``."""
    if ds["predicted_id"].dtype != PREDICTED_ID_DTYPE:
        raise TraceSchemaError(f"{where}: predicted_id has dtype {ds['predicted_id'].dtype}, expected int32")
    if "vocab_size" not in ds.attrs:
        raise TraceSchemaError(f"{where}: has predicted_id but no attribute 'vocab_size'")
    if ds.sizes[TOKEN] == 0:
        return
    ids = np.asarray(ds["predicted_id"].values)
    low, high, n_vocab = int(ids.min()), int(ids.max()), int(ds.attrs["vocab_size"])
    if low < 0 or high >= n_vocab:
        bad = low if low < 0 else high
        raise TraceSchemaError(f"{where}: predicted_id holds {bad}, outside the vocabulary [0, {n_vocab})")


def router_probs(logits: xr.DataArray, scoring: str) -> xr.DataArray:
    """Return the router's per-expert scores from raw logits, named ``router_probs``.

    Softmax families give probabilities over all experts; sigmoid families (DeepSeek-V3,
    GLM-4-MoE) give independent affinities in (0, 1) that need not sum to 1.
    """
    x = logits.astype(np.float32)
    if scoring.startswith("sigmoid"):
        out = 1.0 / (1.0 + np.exp(-x))
    else:
        shifted = x - x.max(EXPERT)
        e = np.exp(shifted)
        out = e / e.sum(EXPERT)
    return out.rename("router_probs")
