"""Shuffles within groups, drawn block by block over a chunked trace.

A permutation of labels within groups (a domain within each token id, a next-token id
within each input token id) keeps what the null conditions on. On a trace held in memory,
``analysis.shuffles.permute_within`` draws it at once. On a chunked trace no block sees the
whole token dimension, so the draw is split in two: :func:`within_group_draws` decides, from
each block's (group, value) counts alone, how many of each value every block receives; then
each block deals its share to its own tokens (:func:`shuffled_block_values_within`). The
result is a uniform within-group permutation in distribution, though not the draw that
``permute_within`` makes over an in-memory array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def pair_counts(groups: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """Return how many tokens hold each (group, value) pair: columns group, value, n,
    sorted by group then value. A block's input to :func:`within_group_draws`."""
    pairs = pd.DataFrame({"group": np.asarray(groups, np.int64), "value": np.asarray(values, np.int64)})
    return pairs.value_counts(sort=False).rename("n").reset_index().sort_values(["group", "value"], ignore_index=True)


def within_group_draws(pairs: Sequence[pd.DataFrame], seed: int, max_items: int = 1 << 22) -> list[pd.DataFrame]:
    """Return, per block, the (group, value) counts that a permutation of the values within
    each group, over all tokens of all blocks, puts in that block.

    ``pairs[b]`` is block b's :func:`pair_counts`. Each group's values are laid out in a
    random order and cut into the blocks' shares of the group: a random table with the
    group's margins, which is what a within-group permutation leaves in each block. Groups
    are taken in batches of at most ``max_items`` tokens (one larger group alone), so memory
    is bounded by the largest group, not by the trace.
    """
    rng = np.random.default_rng(seed)
    table = pd.concat([p.assign(block=b) for b, p in enumerate(pairs)], ignore_index=True)
    by_group = table.sort_values(["group", "value", "block"], kind="stable", ignore_index=True)
    group_size = by_group.groupby("group", sort=True)["n"].sum()
    batch = np.cumsum(group_size.to_numpy()) // max_items  # groups that share a batch
    out = []
    for number in np.unique(batch):
        groups = group_size.index[batch == number]
        rows = by_group[by_group["group"].isin(groups)]
        n = rows["n"].to_numpy()
        group_of = np.repeat(rows["group"].to_numpy(), n)
        value_of = np.repeat(rows["value"].to_numpy(), n)
        value_of = value_of[np.lexsort((rng.random(n.sum()), group_of))]  # shuffled within group
        slots = rows.sort_values(["group", "block"], kind="stable")
        block_of = np.repeat(slots["block"].to_numpy(), slots["n"].to_numpy())
        drawn = pd.DataFrame({"block": block_of, "group": group_of, "value": value_of})
        out.append(drawn.value_counts(sort=False).rename("n").reset_index())
    drawn = pd.concat(out, ignore_index=True).sort_values(["block", "group", "value"], ignore_index=True)
    parts = dict(tuple(drawn.groupby("block", sort=True)))
    empty = drawn.iloc[:0].drop(columns="block")
    return [parts[b].drop(columns="block").reset_index(drop=True) if b in parts else empty for b in range(len(pairs))]


def shuffled_block_values_within(groups: np.ndarray, drawn: pd.DataFrame, seed: int, block: int) -> np.ndarray:
    """Return a block's values shuffled within groups: the ``drawn`` counts of
    :func:`within_group_draws` for this block, dealt in a random order (seeded by (seed,
    block)) to the block's tokens of each group, aligned with ``groups``."""
    rng = np.random.default_rng([seed, block])
    groups = np.asarray(groups, np.int64)
    n = drawn["n"].to_numpy()
    group_of = np.repeat(drawn["group"].to_numpy(), n)
    value_of = np.repeat(drawn["value"].to_numpy(), n)
    if not np.array_equal(group_of, np.sort(groups)):
        raise ValueError(f"block {block}: the drawn counts do not match the block's groups")
    out = np.empty(groups.size, np.int64)
    out[np.argsort(groups, kind="stable")] = value_of[np.lexsort((rng.random(group_of.size), group_of))]
    return out
