"""The standard recipe: transformers' own OLMoE, top-k routing balanced layer by layer.

The model is ``OlmoeForCausalLM`` unchanged, so moe_lib captures it exactly like the
hub's ``allenai/OLMoE-1B-7B-0924``: router at ``model.layers.{i}.mlp.gate`` returning
``(router_logits, top_k_weights, top_k_index)``, experts at ``model.layers.{i}.mlp.experts``.
What this module adds is the recipe around it: the hyperparameters (one dataclass, with
named presets) and the auxiliary losses the training loop adds to the cross-entropy.

Why our own balancing loss: transformers 5.24's ``load_balancing_loss_func`` sums expert
counts and router probabilities over *all* layers before taking their product, so one
layer's collapse hides behind another layer's spread. A probe trained with it at 0.01 left
5-6 of 16 experts nearly dead in three of four layers. ``balance_loss`` below is the
Switch Transformer loss (Fedus et al. 2021, eq. 4-6) computed per layer, then averaged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from transformers import OlmoeConfig, OlmoeForCausalLM

RECIPE = "standard"


@dataclass(frozen=True)
class StandardRecipe:
    """Hyperparameters of the standard recipe: model shape and training, one hashable record."""

    # --- model ---
    n_layers: int = 4  # enough depth for routing to differ between layers
    # Half the DESIGN probe's 256: 3,450 vs 1,865 tokens per CPU-second (bf16, 1 thread), and
    # in a run of ~2.5 M tokens a smaller model loses nothing to capacity but gains steps.
    hidden_size: int = 128
    n_heads: int = 4  # head_dim 32
    n_experts: int = 16  # enough experts for specialization to show, few enough to stay alive
    top_k: int = 2  # OLMoE uses 8 of 64; 2 of 16 keeps the same sparsity order
    expert_size: int = 256  # expert intermediate width: 2x hidden, as a dense FFN would be split
    # OLMoE leaves the k weights unnormalised; with 16 experts they start near 1/16 each and
    # shrink the MoE output ~8x early on, which a run of minutes cannot afford. Renormalise.
    norm_topk_prob: bool = True
    tie_embeddings: bool = True  # saves 1 M parameters at vocab 8k, and learns faster this short
    seq_len: int = 256  # tokens per training block
    # --- optimisation ---
    batch_size: int = 16  # blocks per step: 4,096 tokens
    # 4.1 M tokens: ~25 min per model, both at once, on a quiet two-core machine. At 480
    # steps (1.97 M tokens) the model ended at 5.29 nats, above the bigram's 4.99; each
    # doubling of steps took ~0.45 nats off, so 1000 steps is the shortest run to beat it.
    n_steps: int = 1000
    lr: float = 3e-3  # peak AdamW rate; a 7.6 M model with qk-norm takes it and learns faster
    min_lr_ratio: float = 0.1  # cosine ends at lr * this, not at 0
    warmup_steps: int = 40  # linear warmup, then cosine
    weight_decay: float = 0.1  # on matrices (embedding included), never on norm gains or biases
    betas: tuple[float, float] = (0.9, 0.95)  # nanoGPT's; 0.999 reacts too slowly this short
    grad_clip: float = 1.0  # global-norm clip, guards the first steps at high lr
    # Per-layer Switch loss. At 0.02 the default run had 5 of 16 experts dead in every layer
    # (10 in the cross-layer one) by 300 k tokens; 0.1 is strong enough to keep them alive.
    balance_coef: float = 0.1
    z_coef: float = 1e-3  # router z-loss (ST-MoE): keeps logits small so softmax stays soft
    bf16: bool = True  # CPU autocast; measured faster than float32 at this size
    # --- evaluation and checkpoints ---
    n_checkpoints: int = 10  # log-spaced from ~1 % to 100 % of the steps
    # Fixed held-out subset per domain: 32 blocks, standard error ~0.03 nats, and ten evals
    # cost ~15 % of the training compute.
    eval_tokens_per_domain: int = 8_192

    @property
    def n_tokens(self) -> int:
        """Return the number of training tokens the run consumes."""
        return self.n_steps * self.batch_size * self.seq_len

    def hash(self) -> str:
        """Return a short sha256 of every field: the recipe hash stored with traces."""
        text = json.dumps({"recipe": type(self).__name__, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


PRESETS: dict[str, StandardRecipe] = {
    # Trains in seconds on one CPU thread: for tests, never for analyses.
    "tiny": StandardRecipe(
        n_layers=2, hidden_size=64, n_heads=4, n_experts=4, top_k=2, expert_size=64,
        seq_len=64, batch_size=8, n_steps=40, warmup_steps=4, lr=3e-3, bf16=False,
        n_checkpoints=8, eval_tokens_per_domain=1024,
    ),
    # The site's default model: about 25 minutes on two quiet CPU cores (see README).
    "default": StandardRecipe(),
    # The default trained twice as long (8.2 M tokens, under one pass over the corpus).
    "long": StandardRecipe(n_steps=2000),
    # A control for what the recipe does to routing (issue 12): the default at OLMoE's
    # balance coefficient (0.01) and without z-loss, same model, data and budget. Balance
    # and router entropy of the default model are then read beside this one's.
    "default-weakbalance": StandardRecipe(balance_coef=0.01, z_coef=0.0),
    # For one GPU (not run on these CPU machines): 8 x 512, 32 experts top-4, 49 M tokens,
    # about five passes over the ~10 M-token corpus; a larger corpus can carry a larger model.
    "gpu": StandardRecipe(
        n_layers=8, hidden_size=512, n_heads=8, n_experts=32, top_k=4, expert_size=512,
        seq_len=512, batch_size=64, n_steps=1_500, warmup_steps=100, lr=1e-3,
        eval_tokens_per_domain=65_536,
    ),
}


def build_config(recipe: StandardRecipe, vocab_size: int, special_ids: dict) -> OlmoeConfig:
    """Return the OlmoeConfig for ``recipe`` with the tokenizer's vocabulary and ids."""
    return OlmoeConfig(
        vocab_size=vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.expert_size,
        num_hidden_layers=recipe.n_layers,
        num_attention_heads=recipe.n_heads,
        num_experts=recipe.n_experts,
        num_experts_per_tok=recipe.top_k,
        norm_topk_prob=recipe.norm_topk_prob,
        tie_word_embeddings=recipe.tie_embeddings,
        max_position_embeddings=recipe.seq_len,
        # The training loop adds its own per-layer loss; keep transformers' global one out.
        router_aux_loss_coef=0.0,
        pad_token_id=special_ids.get("pad_token_id"),
        bos_token_id=special_ids.get("bos_token_id"),
        eos_token_id=special_ids.get("eos_token_id"),
    )


def build_model(recipe: StandardRecipe, vocab_size: int, special_ids: dict) -> OlmoeForCausalLM:
    """Return a freshly initialised OlmoeForCausalLM (float32) for ``recipe``."""
    return OlmoeForCausalLM(build_config(recipe, vocab_size, special_ids))


def balance_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Return the Switch load-balancing loss computed per MoE layer, averaged over layers.

    For each layer, ``n_experts * sum_e f_e * P_e`` where ``f_e`` is the fraction of the
    layer's top-k assignments that went to expert e and ``P_e`` its mean router probability.
    It equals 1 when the layer is perfectly balanced and grows to ``n_experts / top_k`` when
    every token picks the same k experts; averaging over layers (not pooling counts across
    them, as transformers does) lets no layer's imbalance hide behind another's.

    Parameters
    ----------
    router_logits
        One ``(token, expert)`` tensor per MoE layer: raw logits, as
        ``output_router_logits=True`` returns them.
    top_k
        Experts per token.
    """
    losses = []
    for logits in router_logits:
        probs = F.softmax(logits.float(), dim=-1)  # (token, expert)
        n_experts = probs.shape[-1]
        chosen = probs.topk(top_k, dim=-1).indices  # (token, slot)
        counts = torch.zeros(n_experts, device=probs.device).scatter_add_(
            0, chosen.reshape(-1), torch.ones(chosen.numel(), device=probs.device)
        )
        fraction = counts / chosen.numel()  # f_e, sums to 1
        losses.append(n_experts * (fraction * probs.mean(0)).sum())
    return torch.stack(losses).mean()


def z_loss(router_logits: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Return the router z-loss (mean squared log-sum-exp of the logits), averaged over layers."""
    return torch.stack([torch.logsumexp(x.float(), dim=-1).square().mean() for x in router_logits]).mean()


def auxiliary_losses(model, outputs, recipe: StandardRecipe) -> dict[str, torch.Tensor]:
    """Return the recipe's auxiliary losses, already weighted, keyed by name."""
    return {
        "balance": recipe.balance_coef * balance_loss(outputs.router_logits, recipe.top_k),
        "z": recipe.z_coef * z_loss(outputs.router_logits),
    }


def preset(name: str, **overrides) -> StandardRecipe:
    """Return the named preset, with any field overridden."""
    if name not in PRESETS:
        raise ValueError(f"standard recipe: unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
