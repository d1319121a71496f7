"""The cross-layer routing recipe: a small routing vector carried from layer to layer.

Every token carries a routing vector ``r`` of ``routing_dim`` numbers (32 by default)
beside its hidden state ``h``. It starts at zero and each decoder layer ``l`` writes to it
before routing, from the normalised hidden state the experts will see::

    h_l   = post_attention_layernorm(x_l)                     # (token, hidden)
    r_l   = r_{l-1} + sigmoid(write_gate_l(h_l)) * down_l(h_l)  # (token, routing_dim)
    logits_l = r_l @ (W_shared + O_l).T                       # (token, expert)

``W_shared`` is one router matrix used by every layer (``model.shared_router``) and
``O_l`` a per-layer offset (``model.layers.{l}.mlp.gate.offset``), initialised at zero
and pulled back towards zero by an L2 penalty in the loss, so layers route through a
common code unless the data pays for a difference. The gate then scores like OLMoE:
softmax over all experts, the k largest, renormalised only if ``norm_topk_prob``.

Everything else is transformers' OLMoE: attention, RMSNorm, rotary embedding and the
experts module. The router at ``model.layers.{l}.mlp.gate`` returns
``(router_logits, top_k_weights, top_k_index)`` and the experts at
``model.layers.{l}.mlp.experts`` are called as ``experts(hidden, top_k_index,
top_k_weights)``, so moe_lib captures this model like a hub OLMoE. Importing this module
registers ``model_type="moe_crosslayer"`` with AutoConfig and AutoModelForCausalLM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    OlmoeConfig,
)
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import (
    MoeCausalLMOutputWithPast,
    MoeModelOutputWithPast,
)
from transformers.models.olmoe.modeling_olmoe import (
    OlmoeAttention,
    OlmoeExperts,
    OlmoePreTrainedModel,
    OlmoeRMSNorm,
    OlmoeRotaryEmbedding,
)

from moe_lib.models import standard

RECIPE = "cross-layer"
MODEL_TYPE = "moe_crosslayer"


@strict
class CrossLayerConfig(OlmoeConfig):
    """OlmoeConfig plus the width of the routing vector carried across layers."""

    model_type = MODEL_TYPE
    routing_dim: int = 32


@dataclass(frozen=True)
class CrossLayerRecipe(standard.StandardRecipe):
    """The standard recipe's hyperparameters plus the routing stream's."""

    routing_dim: int = 32  # tens of dims: enough for 16 experts, small enough to analyse
    offset_penalty: float = 1e-3  # L2 on each layer's offset O_l, summed over layers


PRESETS: dict[str, CrossLayerRecipe] = {
    name: CrossLayerRecipe(**asdict(recipe), routing_dim=8 if name == "tiny" else 32)
    for name, recipe in standard.PRESETS.items()
}


def preset(name: str, **overrides) -> CrossLayerRecipe:
    """Return the named preset, with any field overridden."""
    if name not in PRESETS:
        raise ValueError(f"cross-layer recipe: unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class RoutingUpdate(nn.Module):
    """Adds a gated down-projection of the hidden state to the routing vector."""

    def __init__(self, config: CrossLayerConfig):
        super().__init__()
        self.down = nn.Linear(config.hidden_size, config.routing_dim, bias=False)
        self.write_gate = nn.Linear(config.hidden_size, config.routing_dim, bias=True)

    def forward(self, hidden: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
        # (batch, seq, hidden), (batch, seq, routing_dim) -> (batch, seq, routing_dim)
        return routing + torch.sigmoid(self.write_gate(hidden)) * self.down(hidden)


class CrossLayerRouter(nn.Module):
    """Scores experts from the routing vector with the shared matrix plus this layer's offset."""

    def __init__(self, config: CrossLayerConfig, shared: nn.Linear):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.norm_topk_prob = config.norm_topk_prob
        self.routing_dim = config.routing_dim
        self.offset = nn.Parameter(torch.zeros(config.num_experts, config.routing_dim))
        # A tuple, not an attribute: the shared matrix is registered once, on the model,
        # so it is one parameter in state_dict and the optimizer, not one per layer.
        self._shared = (shared,)

    @property
    def shared_weight(self) -> torch.Tensor:
        """Return the router matrix shared by all layers, ``(expert, routing_dim)``."""
        return self._shared[0].weight

    def forward(self, routing: torch.Tensor):
        """Return ``(router_logits, top_k_weights, top_k_index)`` for ``(token, routing_dim)`` input."""
        routing = routing.reshape(-1, self.routing_dim)
        router_logits = self._shared[0](routing) + F.linear(routing, self.offset)  # (token, expert)
        router_probs = F.softmax(router_logits, dtype=torch.float, dim=-1)
        top_k_weights, top_k_index = torch.topk(router_probs, self.top_k, dim=-1)  # (token, slot)
        if self.norm_topk_prob:
            top_k_weights = top_k_weights / top_k_weights.sum(dim=-1, keepdim=True)
        return router_logits, top_k_weights.to(router_logits.dtype), top_k_index


class CrossLayerMoeBlock(nn.Module):
    """Routes each token by its routing vector to the OLMoE experts."""

    def __init__(self, config: CrossLayerConfig, shared: nn.Linear):
        super().__init__()
        self.gate = CrossLayerRouter(config, shared)
        self.experts = OlmoeExperts(config)

    def forward(self, hidden: torch.Tensor, routing: torch.Tensor):
        """Return the experts' weighted output ``(batch, seq, hidden)`` and the router logits."""
        batch, seq, width = hidden.shape
        flat = hidden.reshape(-1, width)
        router_logits, top_k_weights, top_k_index = self.gate(routing.reshape(-1, routing.shape[-1]))
        return self.experts(flat, top_k_index, top_k_weights).reshape(batch, seq, width), router_logits


class CrossLayerDecoderLayer(nn.Module):
    """OLMoE's pre-norm decoder layer, with the routing-vector update before the MoE block."""

    def __init__(self, config: CrossLayerConfig, layer_idx: int, shared: nn.Linear):
        super().__init__()
        self.self_attn = OlmoeAttention(config=config, layer_idx=layer_idx)
        self.input_layernorm = OlmoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = OlmoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.routing_update = RoutingUpdate(config)
        self.mlp = CrossLayerMoeBlock(config, shared)

    def forward(self, hidden, routing, position_embeddings, attention_mask, cache=None, **kwargs):
        attended, _ = self.self_attn(
            self.input_layernorm(hidden),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden = hidden + attended
        normed = self.post_attention_layernorm(hidden)
        routing = self.routing_update(normed, routing)
        mixed, router_logits = self.mlp(normed, routing)
        return hidden + mixed, routing, router_logits


class CrossLayerPreTrainedModel(OlmoePreTrainedModel):
    config_class = CrossLayerConfig
    config: CrossLayerConfig
    _no_split_modules = ["CrossLayerDecoderLayer"]
    # Router logits are collected by the forward itself, not by output-recording hooks.
    _can_record_outputs = {}

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        # Our experts are transformers' OlmoeExperts, which carry @use_experts_implementation;
        # transformers looks for that decorator in the model class's own module, does not find
        # it here, and would otherwise run the eager loop over experts: 2.6x slower than the
        # standard recipe on a GPU (benchmarks/bench_experts.py).
        return True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CrossLayerRouter):
            # Offsets start at zero: every layer begins with the shared router alone.
            init.zeros_(module.offset)


class CrossLayerModel(CrossLayerPreTrainedModel):
    """The decoder stack: embeddings, layers carrying (hidden, routing), final norm."""

    def __init__(self, config: CrossLayerConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.shared_router = nn.Linear(config.routing_dim, config.num_experts, bias=False)
        self.layers = nn.ModuleList(
            [CrossLayerDecoderLayer(config, i, self.shared_router) for i in range(config.num_hidden_layers)]
        )
        self.norm = OlmoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = OlmoeRotaryEmbedding(config=config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        output_router_logits=False,
        **kwargs,
    ) -> MoeModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("CrossLayerModel: give exactly one of input_ids or inputs_embeds")
        # generate() still passes the cache under its old name.
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if position_ids is None:
            seen = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + seen)[None]
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden = inputs_embeds
        routing = inputs_embeds.new_zeros(*inputs_embeds.shape[:-1], self.config.routing_dim)
        all_logits = []
        for layer in self.layers:
            hidden, routing, router_logits = layer(hidden, routing, position_embeddings, mask, cache=cache, **kwargs)
            all_logits.append(router_logits)
        return MoeModelOutputWithPast(
            last_hidden_state=self.norm(hidden),
            cache=cache,
            router_logits=tuple(all_logits) if output_router_logits else None,
        )


class CrossLayerForCausalLM(CrossLayerPreTrainedModel, GenerationMixin):
    """The cross-layer MoE with a language-model head (tied to the embedding if configured)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: CrossLayerConfig):
        super().__init__(config)
        self.model = CrossLayerModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def offset_l2(self) -> torch.Tensor:
        """Return the sum over layers of the squared Frobenius norm of each router offset."""
        return torch.stack([layer.mlp.gate.offset.square().sum() for layer in self.model.layers]).sum()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_router_logits=None,
        logits_to_keep=0,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        """Return logits (and the causal-LM loss if ``labels``); router logits if asked.

        Like OLMoE's forward, but the auxiliary losses are left to the training recipe
        (``auxiliary_losses``), which computes them per layer.
        """
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_router_logits=output_router_logits,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return MoeCausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, router_logits=outputs.router_logits
        )


def build_config(recipe: CrossLayerRecipe, vocab_size: int, special_ids: dict) -> CrossLayerConfig:
    """Return the CrossLayerConfig for ``recipe`` with the tokenizer's vocabulary and ids."""
    base = standard.build_config(recipe, vocab_size, special_ids).to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        base.pop(key, None)
    return CrossLayerConfig(**base, routing_dim=recipe.routing_dim)


def build_model(recipe: CrossLayerRecipe, vocab_size: int, special_ids: dict) -> CrossLayerForCausalLM:
    """Return a freshly initialised CrossLayerForCausalLM (float32) for ``recipe``."""
    return CrossLayerForCausalLM(build_config(recipe, vocab_size, special_ids))


def auxiliary_losses(model, outputs, recipe: CrossLayerRecipe) -> dict[str, torch.Tensor]:
    """Return the recipe's auxiliary losses, already weighted: balance, z and offset L2."""
    return {
        **standard.auxiliary_losses(model, outputs, recipe),
        "offset": recipe.offset_penalty * model.offset_l2(),
    }


AutoConfig.register(MODEL_TYPE, CrossLayerConfig, exist_ok=True)
AutoModel.register(CrossLayerConfig, CrossLayerModel, exist_ok=True)
AutoModelForCausalLM.register(CrossLayerConfig, CrossLayerForCausalLM, exist_ok=True)
