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
