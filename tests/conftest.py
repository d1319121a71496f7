"""Shared fixtures: tiny random-weight models of every family, built from configs; no downloads.

MOE_LIB_TEST_DEVICE=cuda runs the family fixtures (and so the capture, ablation and lens
tests on them) on a GPU; the default is the CPU.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from moe_lib.models.tiny import TINY_CONFIGS, tiny_model

FAMILY_NAMES = sorted(TINY_CONFIGS)
DEVICE = os.environ.get("MOE_LIB_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session", params=FAMILY_NAMES)
def any_family_model(request):
    """A tiny model of each supported family, fp32, in eval mode, on DEVICE."""
    return tiny_model(request.param).to(DEVICE)


@pytest.fixture
def token_batch():
    """Two sequences of 12 random token ids, the second padded after 7 tokens (right padding)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 512, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    input_ids[1, 7:] = 0
    return {"input_ids": input_ids.to(DEVICE), "attention_mask": attention_mask.to(DEVICE)}


@pytest.fixture(scope="session")
def tokenizer():
    """A 512-entry byte-level BPE trained on standard-library docstrings (real text)."""
    from moe_lib.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


class TinySite:
    """The site's pages executed on the tiny models from an empty cache, each page once per
    session (the chapter tests and the browser tests share the runs)."""

    MODELS = ("standard-tiny", "cross-layer-tiny")

    def __init__(self, root):
        self.root = root
        self._executed = {}

    def parameters(self, page) -> dict:
        from chapter_runner import PROJECT_ROOT

        parameters = {"models": list(self.MODELS)}
        if "control_models" in page.read_text():  # a run and its recipe control: here the two tiny ones
            parameters["control_models"] = list(self.MODELS)
        if "mmlu_source" in page.read_text():
            # a fresh clone has no MMLU download: the committed CSV-layout fixture stands in
            parameters |= {"mmlu_source": "csv", "mmlu_root": str(PROJECT_ROOT / "tests" / "fixtures" / "mmlu")}
        return parameters

    def execute(self, page):
        """Return the executed page (``chapter_runner.Executed``), running it the first time."""
        import chapter_runner

        if page not in self._executed:
            self._executed[page] = chapter_runner.execute(page, self.parameters(page))
        return self._executed[page]


@pytest.fixture(scope="session")
def tiny_site(tmp_path_factory):
    """An empty cache and models folder, a small corpus to train the tiny models on, and
    the pages executed there (:class:`TinySite`)."""
    from moe_lib.site.probes import tiny_corpus

    root = tmp_path_factory.mktemp("empty")
    saved = {k: os.environ.get(k) for k in ("MOE_LIB_CACHE", "MOE_LIB_MODELS", "MOE_LIB_CORPUS")}
    os.environ.update(MOE_LIB_CACHE=str(root / "cache"), MOE_LIB_MODELS=str(root / "models"),
                      MOE_LIB_CORPUS=str(tiny_corpus(root / "corpus")))
    yield TinySite(root)
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
