"""Tiny random-weight models of every supported family, built from transformers configs.

They run in milliseconds on a CPU and are what the tests, benchmarks and the empty-cache
chapter runs use where no hub checkpoint can be fetched. Each config keeps its family's
routing features (shared experts, dense first layers, groups, correction bias, sparse
steps) so the capture checks exercise them.
"""

from __future__ import annotations

import importlib

import torch
import transformers

# Common to all: 4 layers so dense/sparse layer rules have room to show, 8 experts, top-2.
_BASE = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    num_experts_per_tok=2,
    tie_word_embeddings=False,
    pad_token_id=0,  # the families' defaults point past a 512-entry vocabulary
    bos_token_id=1,
    eos_token_id=2,
)

# DeepSeek attention needs num_key_value_heads == num_attention_heads and
# head_dim == qk_rope_head_dim in tiny configs, or it fails with a size mismatch.
_DEEPSEEK_ATTENTION = dict(
    num_key_value_heads=4,
    q_lora_rank=None,
    kv_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    head_dim=8,
    moe_intermediate_size=32,
)

TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "olmoe": ("OlmoeConfig", dict(num_experts=8)),
    "flex_olmo": ("FlexOlmoConfig", dict(num_experts=8)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            decoder_sparse_step=1,
            mlp_only_layers=[0],  # one dense layer, to check layer indexing
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(num_experts=8, moe_intermediate_size=32, norm_topk_prob=True, head_dim=16),
    ),
    "mixtral": ("MixtralConfig", dict(num_local_experts=8)),
    "minimax": (
        "MiniMaxConfig",
        dict(num_local_experts=8, head_dim=16, layer_types=["full_attention"] * 4),
    ),
    "gpt_oss": (
        "GptOssConfig",
        dict(num_local_experts=8, head_dim=16, sliding_window=32, layer_types=["full_attention"] * 4),
    ),
    "granitemoe": ("GraniteMoeConfig", dict(num_local_experts=8)),
    "deepseek_v2": (
        "DeepseekV2Config",
        dict(
            **_DEEPSEEK_ATTENTION,
            n_routed_experts=8,
            n_shared_experts=1,
            first_k_dense_replace=1,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            routed_scaling_factor=1.5,
        ),
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        dict(
            **_DEEPSEEK_ATTENTION,
            n_routed_experts=8,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
        ),
    ),
    "glm4_moe": (
        "Glm4MoeConfig",
        dict(
            n_routed_experts=8,
            n_shared_experts=1,
            moe_intermediate_size=32,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            head_dim=16,
            routed_scaling_factor=1.8,
        ),
    ),
    "dots1": (
        "Dots1Config",
        dict(
            n_routed_experts=8,
            n_shared_experts=1,
            moe_intermediate_size=32,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            head_dim=16,
            layer_types=["full_attention"] * 4,
        ),
    ),
    "moe_crosslayer": ("moe_lib.models.cross_layer.CrossLayerConfig", dict(num_experts=8, routing_dim=8)),
    "ernie4_5_moe": (
        "Ernie4_5_MoeConfig",
        dict(num_experts=8, moe_intermediate_size=32, moe_num_shared_experts=1, head_dim=16),
    ),
}


def tiny_config(model_type: str, **overrides) -> transformers.PretrainedConfig:
    """Return a tiny config of ``model_type`` (a key of TINY_CONFIGS), with ``overrides``."""
    if model_type not in TINY_CONFIGS:
        raise KeyError(f"no tiny config for {model_type!r}; have {sorted(TINY_CONFIGS)}")
    class_name, family_kwargs = TINY_CONFIGS[model_type]
    kwargs = {**_BASE, **family_kwargs, **overrides}
    if "." in class_name:  # one of moe_lib's own configs
        module_name, _, class_name = class_name.rpartition(".")
        return getattr(importlib.import_module(module_name), class_name)(**kwargs)
    return getattr(transformers, class_name)(**kwargs)


def tiny_model(model_type: str, seed: int = 0, dtype=torch.float32, **overrides):
    """Return a tiny random-weight causal LM of ``model_type`` in eval mode.

    Correction biases (DeepSeek-V3 family, ERNIE) are drawn at random rather than left at
    zero, so tests see the case where the biased choice differs from the plain top-k.
    """
    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in [*model.named_buffers(), *model.named_parameters()]:
            if name.endswith("e_score_correction_bias"):
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=generator))
        # Zero-initialised routers make every expert tie; real routers never do.
        for name, param in model.named_parameters():
            if name.endswith(("gate.weight", "router.weight", "shared_router.weight")) and param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def tiny_tokenizer(texts: list[str] | None = None, vocab_size: int = 512):
    """Return a byte-level BPE tokenizer of ``vocab_size`` entries trained on ``texts``.

    Defaults to the docstrings of a few standard-library modules: real text, on every machine.
    Its ids fit the tiny models' 512-entry vocabulary.
    """
    import inspect as _inspect
    import json as _json
    import textwrap as _textwrap

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        texts = [_inspect.getdoc(m) or "" for m in (_json, _textwrap, _inspect, torch.nn.Module)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],  # ids 0, 1, 2 as in the tiny configs
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
