"""Expert importance (issue 13): observational scores agree with the trace and with the experts
module itself, removals by id behave as the all-slots ablation, scores and agreement by hand,
resumable runs, and the ``importance`` command."""

import inspect
import json

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from moe_lib.cli import main
from moe_lib.core.capture import capture, experts_argument_names, find_moe_layers
from moe_lib.core.traces import collect_trace
from moe_lib.interventions import importance
from moe_lib.interventions.ablation import Condition
from moe_lib.interventions.importance import measure
from moe_lib.interventions.importance_scores import importance_scores
from moe_lib.interventions.removal import ablate
from moe_lib.models.families import family_of, n_experts
from moe_lib.models.tiny import tiny_model

TEXTS = [(inspect.getdoc(json) or "")[i * 160:(i + 1) * 160] for i in range(3)]


def test_frequency_equals_the_counts_in_the_trace(any_family_model, tokenizer):
    model = any_family_model
    measured = importance_scores(measure(model, tokenizer, TEXTS, causal=False, max_length=32, progress=False),
                                 n_boot=10)
    trace = collect_trace(model, tokenizer, TEXTS, max_length=32, progress=False)
    n_experts = measured.sizes["expert"]
    for index, layer in enumerate(trace["layer"].to_numpy()):
        counts = np.bincount(trace["expert_id"].isel(layer=index).to_numpy().ravel(), minlength=n_experts)
        np.testing.assert_array_equal(measured["n_routed"].sel(layer=layer).to_numpy(), counts)
        np.testing.assert_allclose(measured["frequency"].sel(layer=layer).to_numpy(), counts / counts.sum())
        assert counts.sum() == trace.sizes["token"] * trace.sizes["slot"]


def _experts_call(model, layer, input_ids):
    """Return the experts module of ``layer`` and the (hidden, ids, weights) it is called with."""
    module = model.get_submodule(family_of(model.config).experts.format(layer=layer))
    names = experts_argument_names(module)
    seen = {}

    def keep(mod, args, kwargs):
        bound = dict(zip(names, args)) | kwargs
        seen["call"] = tuple(bound[name].detach().clone() for name in names[:3])

    handle = module.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        handle.remove()
    return module, seen["call"]


def test_reap_of_a_few_tokens_equals_a_direct_computation(any_family_model, tokenizer):
    model = any_family_model
    text = TEXTS[0][:40]
    measured = importance_scores(measure(model, tokenizer, [text], causal=False, max_length=32, progress=False),
                                 n_boot=10)
    input_ids = tokenizer([text], return_tensors="pt")["input_ids"]
    layer = find_moe_layers(model, family_of(model.config))[-1]
    module, (hidden, ids, weights) = _experts_call(model, layer, input_ids)
    # An expert's weighted contribution is what the layer's output loses when its slot's weight is 0.
    sums, counts = np.zeros(measured.sizes["expert"]), np.zeros(measured.sizes["expert"])
    with torch.no_grad():
        full = module(hidden, ids, weights)
        for slot in range(ids.shape[1]):
            without = module(hidden, ids, weights.masked_fill(
                torch.arange(ids.shape[1]) == slot, 0))
            contribution = (full - without).norm(dim=-1)  # = weight x norm of the expert's output
            np.add.at(sums, ids[:, slot].numpy(), contribution.numpy())
            np.add.at(counts, ids[:, slot].numpy(), 1)
    direct = np.where(counts > 0, sums / np.maximum(counts, 1), 0)
    np.testing.assert_allclose(measured["reap"].sel(layer=layer).to_numpy(), direct, rtol=2e-4, atol=1e-6)
    assert (direct > 0).sum() >= 2


def test_removing_an_expert_no_token_routes_to_changes_nothing(any_family_model, tokenizer):
    model = any_family_model
    text = TEXTS[1][:12]  # a few tokens: k of them cannot reach every expert
    measured = measure(model, tokenizer, [text], max_length=4, progress=False)
    unrouted = measured["doc_n_routed"].isel(doc=0) == 0
    assert unrouted.any()
    nll = measured["doc_nll"].isel(doc=0).where(unrouted)
    baseline = float(measured["doc_baseline_nll"][0])
    assert (nll.to_numpy()[unrouted.to_numpy()] == baseline).all()
    routed_changes = measured["doc_nll"].isel(doc=0).where(~unrouted) != baseline
    assert bool(routed_changes.any())  # the other removals do change the loss


def test_removing_every_expert_of_a_layer_equals_the_all_slots_ablation(any_family_model, token_batch):
    model = any_family_model
    layer = find_moe_layers(model, family_of(model.config))[-1]
    with torch.no_grad():
        with ablate(model, experts={layer: range(n_experts(model.config))}):
            by_id = model(**token_batch).logits
        with ablate(model, layers=[layer], slots="all"):
            by_slot = model(**token_batch).logits
        baseline = model(**token_batch).logits
    torch.testing.assert_close(by_id, by_slot, rtol=0, atol=0)
    assert not torch.allclose(by_id, baseline, atol=1e-4)


def test_condition_removing_experts_per_layer_round_trips():
    condition = Condition.removing({2: [3, 1], 1: [0]}, renormalize=True)
    assert condition.experts == "1:0;2:1,3" and condition.layers == (1, 2)
    assert condition.ablate_kwargs()["experts"] == {1: [0], 2: [1, 3]}
    assert condition.name == "experts 1:0;2:1,3 | layers 1,2 | renorm"
    assert not condition.is_baseline and Condition().ablate_kwargs().get("experts") is None
    assert Condition(layers="all", experts="4,5").experts_by_layer() == [4, 5]


def test_reroute_is_refused_where_it_is_not_defined():
    olmoe, deepseek = tiny_model("olmoe"), tiny_model("deepseek_v3")
    with pytest.raises(ValueError, match="renormalize must be False"):
        ablate(olmoe, experts={0: [1]}, reroute=True, renormalize=True)
    with pytest.raises(ValueError, match="not slots"):
        ablate(olmoe, slots=0, reroute=True)
    with pytest.raises(ValueError, match="sigmoid_bias_group_topk"):
        ablate(deepseek, experts={1: [1]}, reroute=True)
    with pytest.raises(ValueError, match="fewer than top_k"):
        ablate(olmoe, experts={0: range(7)}, reroute=True)


def test_reroute_sends_no_token_to_a_masked_expert(token_batch):
    model = tiny_model("qwen3_moe")
    with torch.no_grad(), capture(model, router_logits=False) as cap:
        with ablate(model, experts={1: [0, 1, 2], 3: [5]}, reroute=True):
            model(**token_batch)
        record = cap.pop()
    ids = record.expert_id
    assert not np.isin(ids[:, record.layers.index(1)], [0, 1, 2]).any()
    assert not (ids[:, record.layers.index(3)] == 5).any()
    np.testing.assert_allclose(record.weight.sum(-1), 1, rtol=1e-5)  # norm_topk_prob: still sums to 1


def _measured_by_hand() -> xr.Dataset:
    """Two documents, one layer, three experts: sums chosen so every score is known."""
    routed = np.array([[[4, 2, 0]], [[2, 2, 0]]], float)  # (doc, layer, expert)
    weights = routed * np.array([0.5, 0.25, 0])
    reap = weights * np.array([2.0, 4.0, 0])
    nll = np.stack([np.array([[[14, 10], [12, 10], [10, 10]]], float),
                    np.array([[[8, 6], [7, 6], [6, 6]]], float)])  # (doc, layer, expert, renormalize)
    return xr.Dataset(
        {"doc_n_routed": (("doc", "layer", "expert"), routed), "doc_weight_sum": (("doc", "layer", "expert"), weights),
         "doc_reap_sum": (("doc", "layer", "expert"), reap), "doc_n_tokens": (("doc",), [3, 2]),
         "doc_nll": (("doc", "layer", "expert", "renormalize"), nll), "doc_baseline_nll": (("doc",), [10.0, 6.0]),
         "doc_n_predicted": (("doc",), [2, 2])},
        coords={"doc": [0, 1], "layer": [3], "expert": [0, 1, 2], "renormalize": [False, True]},
    )


def test_scores_and_agreement_by_hand():
    scores = importance_scores(_measured_by_hand(), n_boot=200).sel(layer=3)
    np.testing.assert_allclose(scores["frequency"], [0.6, 0.4, 0.0])
    np.testing.assert_allclose(scores["mean_weight"], [0.5, 0.25, 0.0])
    np.testing.assert_allclose(scores["reap"], [1.0, 1.0, 0.0])
    assert float(scores["baseline_loss"]) == pytest.approx(16 / 4)
    np.testing.assert_allclose(scores["loss_increase"].sel(renormalize=False), [6 / 4, 3 / 4, 0.0])
    np.testing.assert_allclose(scores["loss_increase"].sel(renormalize=True), 0.0)
    rho = scores["spearman"].sel(renormalize=False)
    assert float(rho.sel(criterion="frequency")) == pytest.approx(1.0)
    assert float(rho.sel(criterion="weight")) == pytest.approx(1.0)
    assert float(rho.sel(criterion="reap")) == pytest.approx(np.sqrt(3) / 2)  # a tie between two experts
    assert np.isnan(float(scores["spearman"].sel(renormalize=True, criterion="frequency")))  # causal is constant
    lo, hi = scores["loss_increase_lo"].sel(renormalize=False), scores["loss_increase_hi"].sel(renormalize=False)
    assert (lo <= scores["loss_increase"].sel(renormalize=False)).all() and (hi >= lo).all()


def test_an_interrupted_run_resumes_from_its_finished_batches(tokenizer, tmp_path, monkeypatch):
    model = tiny_model("olmoe")
    identity = {"run": 1}
    first = measure(model, tokenizer, TEXTS, batch_size=1, max_length=16, work_dir=tmp_path / "work",
                    work_identity=identity, progress=False)
    assert len(list((tmp_path / "work").glob("batch-*.npz"))) == len(TEXTS)

    def fail(*args, **kwargs):
        raise AssertionError("a finished batch was computed again")

    monkeypatch.setattr(importance, "observational_sums", fail)
    again = measure(model, tokenizer, TEXTS, batch_size=1, max_length=16, work_dir=tmp_path / "work",
                    work_identity=identity, progress=False)
    xr.testing.assert_identical(first, again)
    with pytest.raises(ValueError, match="another run"):
        measure(model, tokenizer, TEXTS, batch_size=1, max_length=16, work_dir=tmp_path / "work",
                work_identity={"run": 2}, progress=False)


@pytest.fixture(scope="module")
def saved_olmoe(tmp_path_factory):
    """A tiny OLMoE saved with its tokenizer, as `load` reads a local folder."""
    from moe_lib.models.tiny import tiny_tokenizer

    folder = tmp_path_factory.mktemp("models") / "tiny-olmoe"
    tiny_model("olmoe").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_importance_command_writes_one_store_and_reuses_it(saved_olmoe, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS))
    out = tmp_path / "scores.zarr"
    argv = ["importance", str(saved_olmoe), "--texts", str(texts), "--out", str(out), "--max-length", "16",
            "--n-boot", "50"]
    assert main(argv) == 0
    ds = xr.open_zarr(out, consolidated=False)
    assert {"frequency", "mean_weight", "reap", "loss_increase", "spearman"} <= set(ds.data_vars)
    assert ds["loss_increase"].dims == ("layer", "expert", "renormalize") and ds.sizes["expert"] == 8
    assert not (tmp_path / "scores.zarr.work").exists()
    capsys.readouterr()
    assert main(argv) == 0
    assert "already holds these scores" in capsys.readouterr().out


def test_importance_command_stores_the_pruning_studies_on_held_out_texts(saved_olmoe, tmp_path, capsys):
    scored, held_out = tmp_path / "scored.jsonl", tmp_path / "held-out.jsonl"
    for path, texts in ((scored, TEXTS), (held_out, TEXTS[::-1])):
        path.write_text("\n".join(json.dumps({"text": t, "domain": "ab"[i % 2]}) for i, t in enumerate(texts)))
    out = tmp_path / "scores.zarr"
    argv = ["importance", str(saved_olmoe), "--texts", str(scored), "--out", str(out), "--max-length", "16",
            "--n-boot", "20", "--curves-texts", str(held_out), "--n-draws", "2"]
    assert main(argv) == 0
    studies = xr.open_zarr(out, group="studies", consolidated=False).load()
    table = pd.DataFrame({c: studies[c].values for c in studies.attrs["columns"]})
    curves = table[table.study == "curve"]
    assert set(curves.curve) == {"frequency", "weight", "reap", "causal", "random"}
    assert sorted(curves.n_removed.unique()) == [1, 2, 3, 4]  # 1 .. E/2 of 8 experts
    assert curves[curves.curve == "random"].draw.nunique() == 2
    assert set(table[table.study == "keep"].kept_for) == {"a", "b"}  # one expert set per scored domain
    assert set(table.domain) == {"a", "b", "all"}
    assert (table[table.study == "top_k"].top_k == 1).all()  # k' = 1 of the tiny model's top-2
    assert xr.open_zarr(out, consolidated=False).sizes["expert"] == 8  # the scores stay at the root
    capsys.readouterr()
    assert main(argv) == 0 and "already holds these scores" in capsys.readouterr().out
    assert main([*argv[:-2], "--n-draws", "3"]) == 1  # other settings: not the stored ones
    assert "another model, texts or settings" in capsys.readouterr().err


@pytest.mark.parametrize(("lines", "extra", "named"), [
    (['{"text": "one two", "domain": "a"}', '{"text": "three four"}'], [], "line 2 has no label field 'domain'"),
    (['{"text": "one two"}'], ["--no-causal"], "drop --no-causal"),
])
def test_importance_command_refuses_bad_curve_settings_and_writes_nothing(saved_olmoe, tmp_path, capsys, lines,
                                                                         extra, named):
    texts, held_out = tmp_path / "texts.txt", tmp_path / "held-out.jsonl"
    texts.write_text("\n".join(TEXTS))
    held_out.write_text("\n".join(lines))
    out = tmp_path / "scores.zarr"
    argv = ["importance", str(saved_olmoe), "--texts", str(texts), "--out", str(out), "--curves-texts", str(held_out)]
    assert main([*argv, *extra]) == 1
    assert named in capsys.readouterr().err
    assert list(tmp_path.glob("scores*")) == []


@pytest.mark.parametrize(("content", "extra", "named"), [
    ("\n\n", [], "--texts"),
    (None, [], "--texts"),
    ("some text here\n", ["--batch-size", "0"], "--batch-size"),
])
def test_importance_command_names_a_bad_argument_and_writes_nothing(saved_olmoe, tmp_path, capsys, content, extra,
                                                                    named):
    texts = tmp_path / "texts.txt"
    if content is not None:
        texts.write_text(content)
    out = tmp_path / "scores.zarr"
    assert main(["importance", str(saved_olmoe), "--texts", str(texts), "--out", str(out), *extra]) == 1
    assert named in capsys.readouterr().err
    assert list(tmp_path.glob("scores*")) == []
