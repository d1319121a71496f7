"""Analyses out of core (issue 15): every analysis over traces gives on a chunked, Dask-backed
trace what it gives in memory; a dask.distributed LocalCluster is used as it is."""

import numpy as np
import pandas as pd
import pytest
from helpers_traces import random_trace

from moe_lib.analysis import distribution, specialization
from moe_lib.analysis.chunked import exact_quantiles, is_chunked
from moe_lib.core.trace_store import open_trace


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """The same trace in memory and opened from Zarr in blocks of 700 tokens."""
    ds = random_trace(n_tokens=5000, n_layers=3, n_experts=8, top_k=2, seed=3, seq_len=37, with_logits=True)
    path = tmp_path_factory.mktemp("chunked") / "t.zarr"
    chunks = {name: {"chunks": (700,) + var.shape[1:]} for name, var in ds.variables.items() if "token" in var.dims}
    chunks["expert_id"]["_FillValue"] = -1
    ds.to_zarr(path, consolidated=False, encoding=chunks)
    chunked = open_trace(path, chunks={"token": 700})
    assert is_chunked(chunked) and not is_chunked(ds)
    return ds, chunked


def assert_same_table(expected: pd.DataFrame, actual: pd.DataFrame, rtol: float = 1e-9) -> None:
    pd.testing.assert_frame_equal(expected, actual, check_dtype=False, check_exact=False, rtol=rtol)


def test_exact_quantiles_equal_numpy_on_ties_and_signs():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal((2, 900)), np.full((2, 100), 0.5), -np.zeros((2, 5))], axis=1)
    values = values.astype(np.float32)
    import xarray as xr

    ds = xr.Dataset({"v": (("row", "token"), values)}).chunk({"token": 128})
    q = (0.0, 0.05, 0.5, 0.77, 1.0)
    found, _, counts = exact_quantiles(ds, lambda b: b["v"].values, 2, q)
    np.testing.assert_allclose(found, np.quantile(values, q, axis=1), rtol=1e-6)
    assert counts.tolist() == [1005, 1005]


@pytest.mark.parametrize(
    "analysis",
    [
        distribution.weight_by_slot,
        distribution.expert_load,
        lambda ds: distribution.expert_load(ds, n_slots=1),
        distribution.load_balance,
        distribution.router_entropy,
        lambda ds: distribution.router_entropy(ds.drop_vars("router_logits")),
        distribution.consecutive_routing,
    ],
)
def test_distribution_chunked_equals_in_memory(traces, analysis):
    ds, chunked = traces
    assert_same_table(analysis(ds), analysis(chunked), rtol=1e-6)


@pytest.mark.parametrize(
    "analysis",
    [
        specialization.domain_expert_share,
        lambda ds: specialization.domain_expert_share(ds, n_slots=1),
        specialization.characteristic_tokens,
        specialization.coactivation,
    ],
)
def test_specialization_chunked_equals_in_memory(traces, analysis):
    ds, chunked = traces
    assert_same_table(analysis(ds), analysis(chunked))


def assert_same_but_baseline(expected, actual, baseline_columns, atol):
    """Equal tables, except the shuffled baselines: those are drawn by block on a chunked
    trace (another uniform shuffle), so they agree only as estimates of one quantity."""
    assert_same_table(expected.drop(columns=baseline_columns), actual.drop(columns=baseline_columns))
    for column in baseline_columns:
        np.testing.assert_allclose(actual[column], expected[column], atol=atol)


def test_domain_tv_distance_chunked(traces):
    ds, chunked = traces
    expected = specialization.domain_tv_distance(ds, n_permutations=4)
    actual = specialization.domain_tv_distance(chunked, n_permutations=4)
    assert_same_but_baseline(expected, actual, ["tv_shuffled", "tv_shuffled_q95"], atol=0.05)
    assert (actual["tv_shuffled"] > 0).all()  # a real shuffle, not the observed labels


def test_vocabulary_by_kind_chunked(traces):
    ds, chunked = traces
    expected = specialization.vocabulary_by_kind(ds, min_count=5)
    actual = specialization.vocabulary_by_kind(chunked, min_count=5)
    assert_same_but_baseline(expected, actual, ["specialization_shuffled"], atol=0.35)
    # the shuffled baseline keeps each id's count: its mean matches the in-memory one closely
    assert abs(actual["specialization_shuffled"].mean() - expected["specialization_shuffled"].mean()) < 0.02


def test_a_user_started_local_cluster_runs_the_blocks(traces):
    distributed = pytest.importorskip("distributed")
    ds, chunked = traces
    with (
        # In-process workers: two real workers and scheduler, without two interpreters to start
        # (which took minutes on a loaded CI machine).
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as stream,
    ):
        load = distribution.expert_load(chunked)
        share = specialization.domain_expert_share(chunked)
    assert_same_table(distribution.expert_load(ds), load)
    assert_same_table(specialization.domain_expert_share(ds), share)
    workers = {task["worker"] for task in stream.data}
    assert len(workers) == 2  # both workers ran blocks: the user's client was used as it is


def test_router_saturation_chunked(traces):
    from moe_lib.analysis import saturation

    ds, chunked = traces
    earlier = ds.copy(data={**ds.data_vars, "expert_id": (ds["expert_id"] + 1) % 8})
    earlier = earlier.assign(expert_id=earlier["expert_id"].astype(ds["expert_id"].dtype))
    expected = saturation.router_saturation({"earlier": earlier, "final": ds})
    actual = saturation.router_saturation({"earlier": earlier.chunk({"token": 900}), "final": chunked})
    assert_same_table(expected, actual)
    shifted = earlier.assign_coords(pos=earlier["pos"] + 1).chunk({"token": 900})
    with pytest.raises(ValueError, match="coordinate 'pos' differs"):
        saturation.router_saturation({"earlier": shifted, "final": chunked})


@pytest.fixture(scope="module")
def contextual_traces(tmp_path_factory):
    """A contextual trace (one target a sequence, two meanings of three tokens from two
    sources, layer 2's top-1 following the meaning) in memory and opened from Zarr in blocks."""
    ds = random_trace(n_tokens=6000, n_layers=3, n_experts=8, top_k=2, seed=5, seq_len=30)
    seq, pos = ds["seq"].values, ds["pos"].values
    is_target = pos == 12
    token = np.where(is_target, 100 + seq % 3, ds["token_id"].values).astype(np.int32)
    meaning = np.where(is_target, np.array(["m0", "m1"], dtype=object)[(seq // 3) % 2], "")
    ids = ds["expert_id"].values.copy()
    ids[is_target, 2] = np.stack([np.where(meaning[is_target] == "m0", 1, 2), np.full(is_target.sum(), 3)], axis=1)
    ds = ds.assign(expert_id=(ds["expert_id"].dims, ids)).assign_coords(
        is_target=("token", is_target), token_id=("token", token), meaning=("token", meaning),
        token_str=("token", np.array([f" t{t}" for t in token], dtype=object)),
        target=("token", np.array([f" t{t}" for t in token], dtype=object)),
        source=("token", np.array([f"{'ab'[(s // 6) % 2]}:doc{s}:line 1 [validation]" for s in seq], dtype=object)),
        context_tokens=("token", pos), opens_sample=("token", seq % 5 == 0), document_start=("token", seq % 7 == 0))
    path = tmp_path_factory.mktemp("chunked-contextual") / "t.zarr"
    ds.to_zarr(path, consolidated=False,
               encoding={name: {"chunks": (700,) + var.shape[1:]} for name, var in ds.variables.items()
                         if "token" in var.dims})
    return ds, open_trace(path, chunks={"token": 700})


def _contextual_analyses():
    from moe_lib.analysis import in_document, information, paths
    from moe_lib.site import explorer
    from moe_lib.site import tables as site_tables

    return {
        "expert_information": lambda ds: information.expert_information(ds, n_perm=20),
        "expert_information_by_context": lambda ds: information.expert_information_by_context(ds, n_perm=20),
        "information_by_opening": lambda ds: in_document.information_by_opening(ds, n_perm=20),
        "context_lengths": in_document.context_lengths,
        "continuity_of_targets": site_tables.continuity_of_targets,
        "meaning_flow_of": lambda ds: site_tables.meaning_flow_of(ds, " t100"),
        "meaning_prediction": paths.meaning_prediction,
        "meaning_prediction_nested": paths.meaning_prediction_nested,
        "path_groups_table": lambda ds: site_tables.path_groups_table(ds, targets_only=True, min_tokens=5),
        "route_cluster_agreement": lambda ds: site_tables.route_cluster_agreement(
            ds, targets_only=True, n_permutations=10, min_cluster_size=5),
        "route_counts": explorer.route_counts,
        "occurrence_table": explorer.occurrence_table,
    }


@pytest.mark.parametrize("name", list(_contextual_analyses()))
def test_contextual_analyses_chunked_equal_in_memory(contextual_traces, name):
    """The analyses of the sample probes (alone, in documents) on a Dask-backed trace."""
    ds, chunked = contextual_traces
    analysis = _contextual_analyses()[name]
    expected = analysis(ds)
    assert len(expected)
    pd.testing.assert_frame_equal(expected, analysis(chunked), check_dtype=False)
