"""moe_lib.site: stores found by identity (as training keys them), never stale; tables cached
by their inputs; the committed probe; the build's chapter data cells."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from moe_lib import site
from moe_lib.analysis import distribution
from moe_lib.core import cache
from moe_lib.site import probes as site_probes
from moe_lib.site import tables as site_tables

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _untrained_checkpoint(models_dir: Path, model: str) -> Path:
    """Save a freshly initialised tiny model as the final checkpoint of its run (no training)."""
    import torch
    from transformers import AutoTokenizer

    from moe_lib.models import checkpoints
    from moe_lib.training.train import RECIPES

    recipe_name, preset, recipe = site.own_recipe(model)
    step, tokens = site.schedule(model)[-1]
    tokenizer = AutoTokenizer.from_pretrained(PROJECT_ROOT / "datasets" / "tokenizer")
    special = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    torch.manual_seed(0)
    built = RECIPES[recipe_name].build_model(recipe, len(tokenizer), special)
    state = {"step": step, "tokens_seen": tokens, "recipe": recipe_name, "preset": preset,
             "recipe_hash": recipe.hash(), "seed": 0, "elapsed_s": 0.0, "train_loss": 0.0}
    return checkpoints.save(models_dir / model / "checkpoints", step, built, {}, state)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An empty cache and models folder, with an untrained standard-tiny final checkpoint
    whose domains probe was traced by training's own code (probe_traces.trace_checkpoint)."""
    from moe_lib.training.probe_traces import trace_checkpoint

    root = tmp_path_factory.mktemp("site")
    patch = pytest.MonkeyPatch()
    patch.setenv("MOE_LIB_CACHE", str(root / "cache"))
    patch.setenv("MOE_LIB_MODELS", str(root / "models"))
    corpus = site_probes.tiny_corpus(root / "corpus")
    checkpoint = _untrained_checkpoint(root / "models", "standard-tiny")
    traced = trace_checkpoint(checkpoint, validation_path=corpus / "validation.jsonl", probes=("domains",))
    yield {"root": root, "checkpoint": checkpoint, "trace": traced["domains"]}
    patch.undo()


def test_committed_probe_matches_its_recorded_fingerprint():
    texts, labels, fp = site_probes.domain_probe()
    recorded = json.loads((site_probes.PROBE_DIR / "domains.json").read_text())
    assert fp == recorded["fingerprint"] and len(texts) == recorded["n_texts"]
    assert set(labels) == set(site_probes.LABELS) and all(len(v) == len(texts) for v in labels.values())
    # every corpus domain is in the probe, 8 documents each (probe_traces.domain_probe's default)
    assert set(pd.Series(labels["domain"]).value_counts()) == {8}


def test_written_probe_reads_back_as_training_draws_it(tmp_path):
    from moe_lib.training.probe_traces import domain_probe as draw

    corpus = site_probes.tiny_corpus(tmp_path / "corpus")
    fp = site_probes.write_domain_probe(corpus / "validation.jsonl", tmp_path / "probe")
    assert site_probes.domain_probe(tmp_path / "probe") == draw(corpus / "validation.jsonl")
    assert fp == draw(corpus / "validation.jsonl")[2]


def test_a_tampered_probe_file_is_refused(tmp_path):
    shutil.copytree(site_probes.PROBE_DIR, tmp_path / "probe")
    path = tmp_path / "probe" / "domains.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[0])
    record["text"] += " changed"
    path.write_text(json.dumps(record) + "\n" + "".join(lines[1:]), encoding="utf-8")
    with pytest.raises(ValueError, match="fingerprint"):
        site_probes.domain_probe(tmp_path / "probe")


def test_schedule_follows_the_recipe():
    from moe_lib.training.train import recipe_for

    recipe = recipe_for("standard", "tiny")
    steps = site.schedule("standard-tiny")
    assert len(steps) >= 8 and steps[-1][0] == recipe.n_steps
    assert all(tokens == step * recipe.batch_size * recipe.seq_len for step, tokens in steps)
    assert site.own_recipe("cross-layer-default")[:2] == ("cross-layer", "default")
    assert site.own_recipe("olmoe-1b-7b") is None


def test_trace_finds_the_store_training_wrote_without_tracing(workspace, monkeypatch):
    def no_tracing(*args, **kwargs):
        raise AssertionError("site traced again instead of finding training's store")

    monkeypatch.setattr(site, "_trace_own", no_tracing)
    ds = site.trace("standard-tiny")
    assert ds.attrs["cache_key"] == workspace["trace"].attrs["cache_key"]
    assert ds.sizes["token"] == workspace["trace"].sizes["token"]


def test_a_store_with_a_wrong_key_is_never_served(workspace, tmp_path, monkeypatch):
    path = Path(cache.list_stores()["path"].iloc[0])
    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    group = zarr.open_group(copy, mode="r+")
    group.attrs["cache_key"] = "0" * 16  # made from something else
    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(site, "_trace_own", lambda *a, **k: calls.append(a) or "retraced")
    assert site.trace("standard-tiny") == "retraced" and len(calls) == 1


def test_a_project_model_without_store_or_checkpoint_says_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOE_LIB_MODELS", str(tmp_path / "models"))
    with pytest.raises(site.MissingDataError, match="python -m moe_lib build"):
        site.trace("standard-default")
    with pytest.raises(ValueError, match="no checkpoint at step 7"):
        site.trace("standard-default", step=7)


def test_models_adds_cached_models_but_never_serves_their_foreign_store(workspace, tmp_path, monkeypatch):
    path = Path(cache.list_stores()["path"].iloc[0])
    shutil.copytree(path, tmp_path / "probe-domains-olmoe-1b-7b-0000000000000000.zarr")
    zarr.open_group(tmp_path / "probe-domains-olmoe-1b-7b-0000000000000000.zarr", mode="r+").attrs["model"] = \
        "olmoe-1b-7b"
    shutil.copytree(path, tmp_path / "probe-domains-standard-default-weakbalance-0000000000000000.zarr")
    zarr.open_group(tmp_path / "probe-domains-standard-default-weakbalance-0000000000000000.zarr",
                    mode="r+").attrs["model"] = "standard-default-weakbalance"
    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path))
    # a project run (here the recipe control) shows only where a chapter asks for it
    assert site.models() == [*site.PROJECT_MODELS, "olmoe-1b-7b"]
    assert site.models("olmoe-1b-7b") == ["olmoe-1b-7b"]
    assert site.models(["standard-tiny"]) == ["standard-tiny", "olmoe-1b-7b"]
    calls = []
    monkeypatch.setattr(site, "_trace_hub", lambda model, *a: calls.append(model) or "loaded")
    # the copied store says olmoe but was keyed for another identity: it must not be used
    assert site.trace("olmoe-1b-7b") == "loaded" and calls == ["olmoe-1b-7b"]


_calls = []


def counted_load_balance(ds, n_slots=None):
    """distribution.load_balance, counting its calls."""
    _calls.append(n_slots)
    return distribution.load_balance(ds, n_slots=n_slots)


def test_table_is_cached_by_traces_params_and_code(workspace):
    ds = site.trace("standard-tiny")
    _calls.clear()
    first = site.table("balance-test", ds, counted_load_balance)
    again = site.table("balance-test", ds, counted_load_balance)
    top1 = site.table("balance-test", ds, counted_load_balance, n_slots=1)
    assert _calls == [None, 1]  # the second call was read from the cache
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, distribution.load_balance(ds), check_dtype=False)
    assert not np.allclose(first.max_over_mean, top1.max_over_mean)
    assert site.analysis_version(counted_load_balance) != site.analysis_version(distribution.load_balance)
    keys = site.provenance()
    assert {"trace", "table"} <= set(keys.kind) and ds.attrs["cache_key"] in set(keys.cache_key)


def test_per_model_stacks_with_an_ordered_model_column(workspace):
    table = site.per_model("balance-test-2", ["standard-tiny"], distribution.load_balance)
    assert list(table.model.cat.categories) == ["standard-tiny"]
    assert len(table) == workspace["trace"].sizes["layer"]


def test_token_id_of_reads_the_trace(workspace):
    ds = workspace["trace"]
    strings, ids = ds.token_str.values, ds.token_id.values
    assert site_tables.token_id_of(ds, str(strings[5])) == ids[5]
    with pytest.raises(ValueError, match="never occurs"):
        site_tables.token_id_of(ds, "no such token anywhere")


def test_mean_over_targets_counts_significant_targets():
    table = pd.DataFrame({
        "model": ["a"] * 4, "layer": [0, 0, 1, 1], "target": ["x", "y", "x", "y"],
        "context_js": [0.5, 0.1, 0.3, 0.3], "context_js_shuffled_q95": [0.2, 0.2, 0.2, 0.2],
    })
    out = site_tables.mean_over_targets(table)
    assert out.share_context_significant.tolist() == [0.5, 1.0]
    assert out.context_js.tolist() == pytest.approx([0.3, 0.3]) and out.n_targets.tolist() == [2, 2]


def test_saturation_summary_ignores_the_final_checkpoint_for_the_threshold():
    table = pd.DataFrame({
        "model": "m", "checkpoint": [10, 10, 100, 100, 1000, 1000], "layer": [0, 1] * 3,
        "topk_overlap": [0.5, 0.7, 0.9, 0.95, 1, 1], "top1_agreement": [0.4, 0.6, 0.9, 0.9, 1, 1],
        "topk_overlap_chance": [0.2] * 6,
    })
    row = site_tables.saturation_summary(table).iloc[0]
    assert row.first_tokens == 10 and row.first_topk_overlap == pytest.approx(0.6)
    assert row.tokens_to_threshold == 100 and row.final_tokens == 1000


def test_build_runs_the_parameters_setup_and_data_cells_of_a_chapter():
    from moe_lib.site.chapters import chapter_files, data_cells

    for path in chapter_files():
        sources = data_cells(path)
        assert any("label: data" in s for s in sources), f"{path}: no cell labelled data"
        assert any("label: setup" in s for s in sources), f"{path}: no setup cell"
        assert not any("label: fig-" in s for s in sources)
    # an include's data cell (label data-<name>) runs too, after the chapter's own data-<name> cell
    routing = "\n".join(data_cells(chapter_files()[0].parent / "chapters" / "routing-basics.qmd"))
    assert routing.index('seeds_chapter = "routing-basics"') < routing.index("seeds.across_seeds(")


def test_trace_key_is_the_stores_key_and_tables_need_no_trace_once_cached(workspace, tmp_path, monkeypatch):
    assert site.trace_key("standard-tiny") == site.trace("standard-tiny").attrs["cache_key"]
    first = site.per_model("balance-test-3", ["standard-tiny"], distribution.load_balance)
    # a clone holding only the table: the trace store is gone, the table is still served
    for path in cache.list_stores()["path"]:
        shutil.copytree(path, tmp_path / Path(path).name)
    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path))
    shutil.rmtree(next(tmp_path.glob("probe-domains-standard-tiny-*.zarr")))
    monkeypatch.setattr(site, "_trace_own", lambda *a, **k: pytest.fail("traced for a cached table"))
    pd.testing.assert_frame_equal(first, site.per_model("balance-test-3", ["standard-tiny"],
                                                        distribution.load_balance))


def test_a_checkpoint_of_another_recipe_is_not_traced_as_this_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MOE_LIB_MODELS", str(tmp_path / "models"))
    checkpoint = _untrained_checkpoint(tmp_path / "models", "standard-tiny")
    state = json.loads((checkpoint / "state.json").read_text())
    from transformers import AutoModelForCausalLM

    from moe_lib.models import checkpoints

    model = checkpoints.load_model(checkpoint, AutoModelForCausalLM)
    checkpoints.save(checkpoint.parent, state["step"], model, {}, {**state, "recipe_hash": "an-older-recipe"})
    with pytest.raises(site.MissingDataError, match="an-older-recipe"):
        site.trace("standard-tiny")
    assert cache.list_stores().empty


def test_analysis_version_covers_the_analysis_modules_a_site_table_calls():
    import inspect

    names = [m.__name__ for m in site._code_modules(inspect.getmodule(site_tables.meaning_flow_of))]
    assert {"moe_lib.site.tables", "moe_lib.analysis.crosslayer", "moe_lib.analysis.common"} <= set(names)
    assert site.analysis_version(site_tables.meaning_flow_of) != site.analysis_version(site_tables.targets)


def test_build_lists_the_tables_read_and_the_final_traces(workspace):
    from moe_lib.commands.build import site_stores

    site.per_model("balance-test-4", ["standard-tiny"], distribution.load_balance)
    listed = {Path(p).name for p in site_stores(["standard-tiny"])}
    assert any(name.startswith("balance-test-4-") for name in listed)
    assert f"probe-domains-standard-tiny-{site.trace_key('standard-tiny')}.zarr" in listed


def test_a_table_functions_code_version_covers_the_analysis_modules_it_imports_lazily():
    """site_tables imports route_clusters inside its functions: an edit there must make new tables."""
    from moe_lib import site
    from moe_lib.site import tables as site_tables

    names = {module.__name__ for module in site._code_modules(site_tables)}
    assert {"moe_lib.analysis.route_clusters", "moe_lib.analysis.paths"} <= names
    assert "moe_lib.site" not in names and "moe_lib.training.train" not in names  # data fetching is not followed


def test_a_pretrained_checkpoint_folder_runs_a_chapter_table_and_is_traced_once(tmp_path, monkeypatch):
    """What `quarto render chapters/X.qmd -P 'models:[FOLDER]'` does, with a tiny saved model
    standing in for a pretrained checkpoint: traced on the probe once, then read from the cache."""
    from moe_lib.models import registry
    from moe_lib.models.tiny import tiny_model, tiny_tokenizer

    monkeypatch.setenv("MOE_LIB_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "qwen-like"
    tiny_model("qwen2_moe").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    first = site.per_model("weight-by-slot", [str(folder)], distribution.weight_by_slot)
    assert set(first["model"]) == {str(folder)} and list(first["layer"].unique()) == [1, 2, 3]  # layer 0 is dense

    def no_loading(*args, **kwargs):
        raise AssertionError("the second run must read the cache, not load the model")

    monkeypatch.setattr(registry, "load", no_loading)
    again = site.per_model("weight-by-slot", [str(folder)], distribution.weight_by_slot)
    pd.testing.assert_frame_equal(first, again)
