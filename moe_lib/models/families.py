"""Where each MoE family's router lives and how it scores: data, not code paths.

Every family in transformers 5 that we support splits an MoE block the same way: a router
module returns ``(router_logits, top_k_weights, top_k_index)`` and an experts module is
called as ``experts(hidden_states, top_k_index, top_k_weights)``. Capture hooks exactly those
two modules, so a family is described by the paths to them and by the scoring rule that
turns logits into the k experts (used to check captured ids, never to produce them).

Adding a family: add a row to FAMILIES with its ``model_type`` (``config.model_type``),
the module paths (``{layer}`` is the decoder-layer index), its scoring rule and the config
attributes it reads; then add a tiny config to ``moe_lib.models.tiny`` so the capture tests
cover it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Scoring rules, from the router code of transformers 5.24 (models/<family>/modeling_*.py):
SCORING_RULES = {
    "softmax_topk": "softmax over all experts, then the k largest probabilities",
    "topk_softmax": "the k largest logits, then a softmax over those k only (GPT-OSS, Granite)",
    "softmax_group_topk": "softmax, then top-k within the best expert groups (DeepSeek-V2)",
    "sigmoid_bias_group_topk": (
        "sigmoid, choice by score plus a correction bias within the best groups, "
        "weights from the unbiased sigmoid (DeepSeek-V3, GLM-4-MoE, dots1)"
    ),
    "softmax_bias_topk": "softmax, choice by probability plus a correction bias (ERNIE 4.5)",
}


@dataclass(frozen=True)
class Family:
    """How one transformers MoE family routes tokens, and where its modules live."""

    model_type: str
    router: str  # router module, returns (router_logits, top_k_weights, top_k_index)
    experts: str  # experts module, called as experts(hidden_states, top_k_index, top_k_weights)
    scoring: str  # a key of SCORING_RULES
    norm_topk_prob: str | bool = "norm_topk_prob"  # config attribute, or fixed by the family
    routed_scaling: str | None = None  # config attribute scaling the weights after top-k
    correction_bias: str | None = None  # router attribute added to scores for the choice only
    shared_experts: str | None = None  # always-on expert(s) added to the routed output
    shared_gate: str | None = None  # Linear whose sigmoid scales the shared expert's output
    layers: str = "model.layers"

    @property
    def block(self) -> str:
        """The MoE block that holds router and experts (the router's parent module)."""
        return self.router.rsplit(".", 1)[0]


_MLP = dict(router="model.layers.{layer}.mlp.gate", experts="model.layers.{layer}.mlp.experts")

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in [
        Family("olmoe", **_MLP, scoring="softmax_topk"),
        Family("flex_olmo", **_MLP, scoring="softmax_topk"),
        Family("moe_crosslayer", **_MLP, scoring="softmax_topk"),  # moe_lib's own recipe
        Family(
            "qwen2_moe",
            **_MLP,
            scoring="softmax_topk",
            shared_experts="model.layers.{layer}.mlp.shared_expert",
            shared_gate="model.layers.{layer}.mlp.shared_expert_gate",
        ),
        Family("qwen3_moe", **_MLP, scoring="softmax_topk"),
        # Mixtral and MiniMax always renormalise the k weights; there is no config switch.
        Family("mixtral", **_MLP, scoring="softmax_topk", norm_topk_prob=True),
        Family("minimax", **_MLP, scoring="softmax_topk", norm_topk_prob=True),
        Family(
            "gpt_oss",
            router="model.layers.{layer}.mlp.router",
            experts="model.layers.{layer}.mlp.experts",
            scoring="topk_softmax",
            norm_topk_prob=True,
        ),
        Family(
            "granitemoe",
            router="model.layers.{layer}.block_sparse_moe.router",
            experts="model.layers.{layer}.block_sparse_moe.experts",
            scoring="topk_softmax",
            norm_topk_prob=True,
        ),
        Family(
            "deepseek_v2",
            **_MLP,
            scoring="softmax_group_topk",
            norm_topk_prob=False,  # V2 never renormalises (its config flag is unused)
            routed_scaling="routed_scaling_factor",
            shared_experts="model.layers.{layer}.mlp.shared_experts",
        ),
        *[
            Family(
                model_type,
                **_MLP,
                scoring="sigmoid_bias_group_topk",
                routed_scaling="routed_scaling_factor",
                correction_bias="e_score_correction_bias",
                shared_experts="model.layers.{layer}.mlp.shared_experts",
            )
            for model_type in ("deepseek_v3", "glm4_moe", "dots1")
        ],
        Family(
            "ernie4_5_moe",
            **_MLP,
            scoring="softmax_bias_topk",
            norm_topk_prob=True,
            correction_bias="moe_statics.e_score_correction_bias",
            shared_experts="model.layers.{layer}.mlp.shared_experts",
        ),
    ]
}

_N_EXPERTS_ATTRS = ("num_local_experts", "n_routed_experts", "num_experts")


class UnsupportedFamilyError(ValueError):
    """A model whose ``model_type`` has no row in FAMILIES."""


def family_of(config) -> Family:
    """Return the Family row for a transformers config, or raise naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    raise UnsupportedFamilyError(
        f"model_type {model_type!r} is not a supported MoE family. Supported: "
        f"{', '.join(sorted(FAMILIES))}. To add one, give moe_lib.models.families.FAMILIES a row "
        "with the paths of its router and experts modules and its scoring rule, and a tiny "
        "config in moe_lib.models.tiny so the capture tests cover it."
    )


def n_experts(config) -> int:
    """Return the number of routed experts per MoE layer that ``config`` declares."""
    for attr in _N_EXPERTS_ATTRS:
        value = getattr(config, attr, None)
        if value:
            return int(value)
    raise ValueError(f"{config.model_type}: config has none of {_N_EXPERTS_ATTRS}")


def top_k(config) -> int:
    """Return the number of experts each token is sent to (``num_experts_per_tok``)."""
    return int(config.num_experts_per_tok)


def norm_topk_prob(config, family: Family) -> bool:
    """Return whether the layer rescales its k weights to sum to 1 (before any scaling)."""
    if isinstance(family.norm_topk_prob, bool):
        return family.norm_topk_prob
    return bool(getattr(config, family.norm_topk_prob, False))


def routed_scaling(config, family: Family) -> float:
    """Return the factor the layer multiplies its k weights by after top-k (1 if none)."""
    if family.routed_scaling is None:
        return 1.0
    return float(getattr(config, family.routed_scaling, 1.0) or 1.0)


def expected_moe_layers(config) -> list[int]:
    """Return the decoder-layer indices that ``config`` says are MoE (not dense) layers.

    Reads the dense-layer conventions of the families: ``first_k_dense_replace``
    (DeepSeek, GLM), ``mlp_only_layers`` with ``decoder_sparse_step`` (Qwen),
    ``moe_layer_start_index``/``end_index``/``interval`` (ERNIE). Capture finds MoE layers
    from the modules themselves; this is the config's claim, checked against them.
    """
    n_layers = int(config.num_hidden_layers)
    first = max(
        int(getattr(config, "first_k_dense_replace", 0) or 0),
        int(getattr(config, "moe_layer_start_index", 0) or 0),
    )
    last = getattr(config, "moe_layer_end_index", None)
    last = n_layers - 1 if last is None or last < 0 else int(last)
    dense_only = set(getattr(config, "mlp_only_layers", None) or [])
    step = int(getattr(config, "decoder_sparse_step", None) or getattr(config, "moe_layer_interval", 1) or 1)
    return [
        i
        for i in range(n_layers)
        if first <= i <= last and i not in dense_only and (i + 1) % step == 0
    ]
