"""Clusters of routes by Hamming distance, compared with token labels by adjusted mutual
information against a permutation baseline.

HDBSCAN (scikit-learn's) on the precomputed Hamming distances, i.e. the share of layers
whose top-1 expert differs. Distances are quadratic in tokens, so a seeded sample is used.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy.spatial.distance import pdist, squareform
from scipy.stats import rankdata
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_mutual_info_score

from moe_lib.analysis.common import label_codes, top1
from moe_lib.analysis.shuffles import permute_within
from moe_lib.analysis.paths import LABELS, window_start


def cluster_routes(
    ds: xr.Dataset,
    first_layer: int | None = None,
    length: int | None = None,
    max_tokens: int = 3000,
    min_cluster_size: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Return a cluster per sampled token, from HDBSCAN on the Hamming distance of routes.

    Returns
    -------
    DataFrame
        Columns token (index into ``ds``'s token dim), cluster (-1 = noise), and the path
        (experts joined by "-").
    """
    start, length = window_start(ds, first_layer, length)
    routes = top1(ds)[:, start:start + length]
    rng = np.random.default_rng(seed)
    n_tokens = routes.shape[0]
    # Kept in random order: Hamming distances tie a lot, HDBSCAN breaks ties by input
    # order, and labels that run in blocks of the trace (a text's domain) would then look
    # clustered when the routes say nothing about them.
    sample = rng.choice(n_tokens, min(max_tokens, n_tokens), replace=False)
    distance = squareform(pdist(routes[sample], metric="hamming"))
    clusters = HDBSCAN(min_cluster_size=min_cluster_size, metric="precomputed", copy=False).fit_predict(distance)
    return pd.DataFrame(
        {"token": sample, "cluster": clusters, "path": ["-".join(map(str, r)) for r in routes[sample]]}
    )


def cluster_label_agreement(
    ds: xr.Dataset,
    clusters: pd.DataFrame,
    labels=LABELS,
    n_permutations: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Return the adjusted mutual information between route clusters and each label.

    Noise points (cluster -1) count as one more cluster. Tokens without the label are
    left out. The baseline shuffles the label over the same tokens (seeded), so it sits
    near 0 by construction of AMI; the p-value is (1 + #shuffled >= observed) /
    (1 + n_permutations).

    Returns
    -------
    DataFrame
        Columns label, n_tokens, n_clusters, noise_share, ami, ami_shuffled (mean),
        ami_shuffled_q95, p_value, and the token-keeping null (the label shuffled within
        each token id): ami_token_null (mean), ami_token_null_q95, p_value_token.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for name in labels:
        if name not in ds.coords:
            continue
        codes, _ = label_codes(ds, name)
        values = codes[clusters["token"].values]
        keep = values >= 0
        if len(np.unique(values[keep])) < 2:
            continue
        cluster, values = clusters["cluster"].values[keep], values[keep]
        ami = adjusted_mutual_info_score(values, cluster)
        shuffled = np.array(
            [adjusted_mutual_info_score(rng.permutation(values), cluster) for _ in range(n_permutations)]
        )
        # Routes mostly follow token identity: the label shuffled within each token id keeps
        # what the tokens alone explain, and breaks only what the label adds to them.
        token = np.asarray(ds["token_id"].values)[clusters["token"].values][keep] if "token_id" in ds.coords else None
        within = np.array([adjusted_mutual_info_score(permute_within(values, token, rng), cluster)
                           for _ in range(n_permutations)]) if token is not None else np.full(1, np.nan)
        rows.append(
            {
                "label": name,
                "n_tokens": int(keep.sum()),
                "n_clusters": int(np.unique(cluster[cluster >= 0]).size),
                "noise_share": float((cluster < 0).mean()),
                "ami": ami,
                "ami_shuffled": float(shuffled.mean()),
                "ami_shuffled_q95": float(np.quantile(shuffled, 0.95)),
                "p_value": (1 + int((shuffled >= ami).sum())) / (1 + n_permutations),
                "ami_token_null": float(within.mean()),
                "ami_token_null_q95": float(np.quantile(within, 0.95)),
                "p_value_token": (1 + int((within >= ami).sum())) / (1 + n_permutations) if token is not None
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def path_context_correlation(
    ds: xr.Dataset,
    embeddings: np.ndarray,
    first_layer: int | None = None,
    length: int | None = None,
    max_tokens: int = 1500,
    n_permutations: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Return the rank correlation between route similarity and context similarity, with a
    Mantel permutation test.

    Route similarity of two tokens is the share of layers whose top-1 expert they share
    (1 - Hamming distance); context similarity is the cosine of their context embeddings
    (e.g. from a sentence encoder, computed by the caller). The test permutes which
    embedding belongs to which token (rows and columns together), which keeps both
    similarity structures and breaks only their link.

    Parameters
    ----------
    embeddings : array (token, dim)
        One embedding per token of ``ds`` (pass ``ds`` already reduced to the tokens of interest).

    Returns
    -------
    DataFrame
        One row: n_tokens, spearman, spearman_shuffled (mean), spearman_shuffled_q95, p_value.
        All but n_tokens are NaN where the routes never vary (every pair of tokens at the
        same path distance) or the contexts never vary, or there are fewer than two pairs:
        a correlation with a constant is undefined, and a p-value computed from NaN
        correlations would be (1 + 0) / (1 + n_permutations), a small number that means
        nothing.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.shape[0] != ds.sizes["token"]:
        raise ValueError(f"embeddings has {embeddings.shape[0]} rows for {ds.sizes['token']} tokens")
    start, length = window_start(ds, first_layer, length)
    rng = np.random.default_rng(seed)
    sample = rng.choice(ds.sizes["token"], min(max_tokens, ds.sizes["token"]), replace=False)
    routes = top1(ds)[sample, start:start + length]
    unit = embeddings[sample] / np.linalg.norm(embeddings[sample], axis=1, keepdims=True)
    upper = np.triu_indices(sample.size, k=1)
    route_rank = rankdata(1.0 - pdist(routes, metric="hamming"))
    context_rank = squareform(rankdata((unit @ unit.T)[upper]), checks=False)
    if route_rank.size < 2 or np.ptp(route_rank) == 0 or np.ptp(context_rank[upper]) == 0:
        undefined = dict.fromkeys(("spearman", "spearman_shuffled", "spearman_shuffled_q95", "p_value"), np.nan)
        return pd.DataFrame([{"n_tokens": int(sample.size), **undefined}])

    def correlation(order: np.ndarray) -> float:
        # Permuting tokens permutes the context matrix; its entries' ranks move with them.
        return float(np.corrcoef(route_rank, context_rank[np.ix_(order, order)][upper])[0, 1])

    observed = correlation(np.arange(sample.size))
    shuffled = np.array([correlation(rng.permutation(sample.size)) for _ in range(n_permutations)])
    return pd.DataFrame(
        [{
            "n_tokens": int(sample.size),
            "spearman": observed,
            "spearman_shuffled": float(shuffled.mean()),
            "spearman_shuffled_q95": float(np.quantile(shuffled, 0.95)),
            "p_value": (1 + int((shuffled >= observed).sum())) / (1 + n_permutations),
        }]
    )


def route_map(
    ds: xr.Dataset,
    first_layer: int | None = None,
    length: int | None = None,
    max_tokens: int = 2000,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
) -> pd.DataFrame:
    """Return two UMAP coordinates per sampled token, from the Hamming distance of routes.

    For the picture only: UMAP keeps neighbourhoods, not distances, so how far apart two
    groups sit in the map means nothing; the clusters and their agreement with labels are
    measured on the distances themselves (:func:`cluster_routes`). Tokens with the same
    route land on the same point.

    Returns
    -------
    DataFrame
        Columns token (index into ``ds``'s token dim, ascending), x, y and the path
        (experts joined by "-").
    """
    import warnings

    import umap  # numba-compiled: imported only when a map is drawn

    start, length = window_start(ds, first_layer, length)
    routes = top1(ds)[:, start:start + length]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(routes.shape[0], min(max_tokens, routes.shape[0]), replace=False))
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(sample) - 1), min_dist=min_dist, metric="hamming",
                        random_state=seed, n_jobs=1)
    with warnings.catch_warnings():  # about inverse_transform, which a picture never uses
        warnings.filterwarnings("ignore", "gradient function is not yet implemented", UserWarning)
        xy = reducer.fit_transform(routes[sample].astype(np.float64))
    return pd.DataFrame({"token": sample, "x": xy[:, 0], "y": xy[:, 1],
                         "path": ["-".join(map(str, r)) for r in routes[sample]]})
