"""Small synthetic routing traces for tests: schema-valid Datasets built from numpy arrays.

``make_trace`` wraps arrays the caller chose by hand (so the right answer is known);
``random_trace`` draws a seeded trace with skewed expert loads for invariants and benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from moe_lib.core.schema import EXPERT_ID_DTYPE, SCHEMA_VERSION, check_trace


def make_trace(
    expert_id,
    n_experts: int,
    weight=None,
    *,
    seq=None,
    pos=None,
    token_id=None,
    token_str=None,
    router_logits=None,
    labels: Mapping[str, object] | None = None,
    layers=None,
    model: str = "synthetic",
    family: str = "olmoe",
    scoring: str = "softmax_topk",
    attrs: Mapping[str, object] | None = None,
) -> xr.Dataset:
    """Return a schema-valid trace Dataset built from the given arrays.

    Parameters
    ----------
    expert_id : array (token, layer, slot) or (token, layer)
        Expert ids; a 2-D array means top-1 (one slot).
    n_experts : int
        Number of routed experts (attr ``n_experts``).
    weight : array (token, layer, slot), optional
        Defaults to weights falling with the slot (1/2, 1/4, ...), normalised to sum to 1.
    seq, pos : array (token,), optional
        Default: one text holding every token, positions 0..n-1.
    token_id, token_str : array (token,), optional
        Default: token_id 0 for every token, token_str ``"t<id>"``.
    router_logits : array (token, layer, expert), optional
    labels : mapping of name to array (token,), optional
        Extra token coords such as ``meaning``, ``domain``, ``is_target``.
    layers : array (layer,), optional
        Absolute layer indices; default 0..n_layers-1.
    """
    expert_id = np.asarray(expert_id)
    if expert_id.ndim == 2:
        expert_id = expert_id[:, :, None]
    n_tokens, n_layers, top_k = expert_id.shape
    if weight is None:
        raw = 0.5 ** np.arange(1, top_k + 1)
        weight = np.broadcast_to(raw / raw.sum(), expert_id.shape)
    seq = np.zeros(n_tokens, np.int64) if seq is None else np.asarray(seq)
    pos = np.arange(n_tokens) if pos is None else np.asarray(pos)
    token_id = np.zeros(n_tokens, np.int64) if token_id is None else np.asarray(token_id)
    if token_str is None:
        token_str = np.array([f"t{i}" for i in token_id], dtype=object)
    coords = {
        "seq": ("token", seq),
        "pos": ("token", pos),
        "token_id": ("token", token_id),
        "token_str": ("token", np.asarray(token_str, dtype=object)),
        "layer": np.arange(n_layers) if layers is None else np.asarray(layers),
        "slot": np.arange(top_k),
    }
    for name, values in (labels or {}).items():
        coords[name] = ("token", np.asarray(values))
    data = {
        "expert_id": (("token", "layer", "slot"), expert_id.astype(EXPERT_ID_DTYPE)),
        "weight": (("token", "layer", "slot"), np.asarray(weight, dtype=np.float32)),
    }
    if router_logits is not None:
        coords["expert"] = np.arange(n_experts)
        data["router_logits"] = (("token", "layer", "expert"), np.asarray(router_logits, np.float16))
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = {
        "model": model,
        "family": family,
        "scoring": scoring,
        "top_k": int(top_k),
        "n_experts": int(n_experts),
        "schema_version": SCHEMA_VERSION,
        **dict(attrs or {}),
    }
    return check_trace(ds, where="make_trace")


def random_trace(
    n_tokens: int = 2000,
    n_layers: int = 4,
    n_experts: int = 16,
    top_k: int = 2,
    *,
    seed: int = 0,
    seq_len: int = 100,
    n_vocab: int = 50,
    chunk: int = 65536,
    with_logits: bool = False,
) -> xr.Dataset:
    """Return a seeded random trace with skewed loads, texts of ``seq_len`` tokens, and a
    ``domain`` label (one of three per text); drawn in chunks so millions of tokens fit."""
    rng = np.random.default_rng(seed)
    ids, weights, logits = [], [], []
    for start in range(0, n_tokens, chunk):
        size = min(chunk, n_tokens - start)
        # Same per-layer load profile for every chunk: reseed the profile, not the noise.
        profile_rng = np.random.default_rng(seed)
        load = np.exp(profile_rng.standard_normal((n_layers, n_experts))).astype(np.float32)
        # Exponential race: the k smallest of Exp(1) / load_e are k distinct experts drawn
        # with probability ~ load (the Gumbel top-k trick without its two logarithms).
        draws = rng.standard_exponential((size, n_layers, n_experts), dtype=np.float32)
        # float32 Exp(1) draws can be exactly 0: the floor keeps logs and weights finite.
        keys = np.maximum(draws, np.float32(1e-30)) / load[None]
        part = np.argpartition(keys, top_k - 1, axis=-1)[..., :top_k]
        chosen = np.take_along_axis(keys, part, axis=-1)
        order = np.argsort(chosen, axis=-1)
        if with_logits:
            # Minus log keys as logits: the stored top-k is their top-k, up to float16 ties.
            logits.append((-np.log(keys)).astype(np.float16))
        ids.append(np.take_along_axis(part, order, axis=-1).astype(EXPERT_ID_DTYPE))
        chosen = np.take_along_axis(chosen, order, axis=-1)
        w = chosen[..., :1] / chosen  # falling with the slot, 1 at slot 0
        weights.append((w / w.sum(-1, keepdims=True)).astype(np.float32))
    token = np.arange(n_tokens)
    seq = token // seq_len
    domain = np.array(["code", "news", "speech"], dtype=object)[seq % 3]
    return make_trace(
        np.concatenate(ids),
        n_experts,
        np.concatenate(weights),
        seq=seq,
        pos=token % seq_len,
        token_id=rng.integers(0, n_vocab, n_tokens),
        router_logits=np.concatenate(logits) if with_logits else None,
        labels={"domain": domain},
    )
