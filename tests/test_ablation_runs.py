"""The ablation run's tables: the sample, the malloc setting and what keys the cached tables."""

import json
import platform

import pytest
import torch

from moe_lib.interventions import ablation_runs
from moe_lib.models.tiny import tiny_model


def test_large_blocks_by_mmap_sets_glibc_where_there_is_one():
    assert ablation_runs.large_blocks_by_mmap() is (platform.libc_ver()[0] == "glibc")


def test_large_blocks_by_mmap_changes_nothing_off_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.setattr("ctypes.CDLL", lambda name: pytest.fail("libc called off glibc"))
    assert ablation_runs.large_blocks_by_mmap() is False


def _corpus(path, n_per_domain):
    docs = [{"id": f"{domain}{i}", "source": "test", "location": str(i), "domain": domain, "language": "en",
             "text": f"{domain} text {i}"}
            for domain in ("code", "speech") for i in range(n_per_domain)]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_heldout_items_draws_n_docs_per_domain_the_same_for_a_seed(tmp_path):
    corpus = _corpus(tmp_path / "validation.jsonl", 5)
    texts, labels = ablation_runs.heldout_items(corpus, n_docs=3, seed=1)
    assert labels["domain"] == ["code"] * 3 + ["speech"] * 3
    assert [t.split()[0] for t in texts] == labels["domain"] and set(labels["language"]) == {"en"}
    assert ablation_runs.heldout_items(corpus, n_docs=3, seed=1) == (texts, labels)
    everything, _ = ablation_runs.heldout_items(corpus, n_docs=50)
    assert len(everything) == 10  # a domain with fewer texts gives them all


def test_heldout_items_names_a_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no held-out corpus"):
        ablation_runs.heldout_items(tmp_path / "nope.jsonl")


def test_run_identity_holds_what_the_cached_tables_were_always_keyed_by():
    """The stores of `ablate` and of the site share keys: these fields, and no others."""
    torch.manual_seed(0)
    model = tiny_model("olmoe")
    identity = ablation_runs.run_identity(model, name="m", benchmark="heldout", texts=["a b"],
                                            labels={"domain": ["code"]}, max_length=32, seed=3)
    assert set(identity) == {"model", "family", "revision", "weights_sha256", "dtype", "benchmark", "sample",
                             "max_length", "seed", "ablation_version"}
    assert (identity["model"], identity["dtype"], identity["max_length"], identity["seed"]) == ("m", "float32", 32, 3)
    assert identity["ablation_version"] == ablation_runs.ABLATION_VERSION == 1
    other = ablation_runs.run_identity(model, name="m", benchmark="heldout", texts=["a c"],
                                         labels={"domain": ["code"]}, max_length=32, seed=3)
    assert other["sample"] != identity["sample"]


def test_tables_refuse_an_unknown_benchmark():
    with pytest.raises(ValueError, match="benchmark 'hellaswag'"):
        ablation_runs.lens_table(None, None, [], {}, benchmark="hellaswag", name="m")
