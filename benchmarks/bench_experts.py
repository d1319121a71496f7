"""Training-step speed of both recipes under each experts implementation, in one run.

transformers runs an MoE layer's experts either as an eager loop over experts or as grouped
matrix products (``grouped_mm``); which one a model gets is set per model. This times
forward, backward and AdamW step on random token blocks for the standard and the cross-layer
recipe under each implementation, interleaved, and prints tokens/s and the ratio to eager.

    python benchmarks/bench_experts.py --preset gpu --device cuda      # a GPU
    python benchmarks/bench_experts.py --preset default --steps 3      # this CPU
"""

from __future__ import annotations

import argparse
import time

import torch

from moe_lib.models import cross_layer, standard
from moe_lib.training.train import _autocast, _losses, make_optimizer

RECIPES = {"standard": standard, "cross-layer": cross_layer}
IMPLEMENTATIONS = ("eager", "grouped_mm")


def step_seconds(module, recipe, model, optimizer, blocks, device) -> float:
    """Return the wall time of one training step (synchronised on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with _autocast(recipe, device):
        ce, aux = _losses(model, module, recipe, blocks)
    loss = ce + sum(aux.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpu", help="training preset of both recipes (default: gpu)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and implementation")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size (the project's BPE: 8192)")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    for name, module in RECIPES.items():
        recipe = module.preset(args.preset)
        torch.manual_seed(0)
        model = module.build_model(recipe, args.vocab, {"eos_token_id": 0}).to(device).train()
        optimizer = make_optimizer(model, recipe)
        blocks = torch.randint(0, args.vocab, (recipe.batch_size, recipe.seq_len), generator=generator).to(device)
        times = {impl: [] for impl in IMPLEMENTATIONS}
        for impl in IMPLEMENTATIONS:  # one untimed warm-up step each (kernel selection, allocation)
            model.set_experts_implementation(impl)
            step_seconds(module, recipe, model, optimizer, blocks, device)
        for _ in range(args.steps):  # interleaved, so drift of the machine hits both alike
            for impl in IMPLEMENTATIONS:
                model.set_experts_implementation(impl)
                times[impl].append(step_seconds(module, recipe, model, optimizer, blocks, device))
        tokens = blocks.numel()
        median = {impl: sorted(t)[len(t) // 2] for impl, t in times.items()}
        for impl in IMPLEMENTATIONS:
            print(f"{name:12s} {impl:10s} {tokens / median[impl]:12,.0f} tokens/s "
                  f"(x{median['eager'] / median[impl]:.2f} of eager)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
