"""`python -m moe_lib info [MODEL]`: supported families and registered models."""

from __future__ import annotations

import argparse


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="list supported MoE families and registered models, or describe one model",
        description="Without MODEL: the family table and the model registry. With MODEL (a "
        "registry name, hub id or folder): load it and print its MoE layers and routing rule.",
    )
    parser.add_argument("model", nargs="?", help="a model to load and describe")
    parser.add_argument("--revision", help="hub branch, tag or commit, or a training run's checkpoint (step-000480)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moe_lib.models.families import FAMILIES, SCORING_RULES
    from moe_lib.models.registry import REGISTRY

    if args.model is None:
        print("families (config.model_type: scoring rule; router module)")
        for family in FAMILIES.values():
            print(f"  {family.model_type:16} {family.scoring:24} {family.router}")
        print("\nscoring rules")
        for rule, meaning in SCORING_RULES.items():
            print(f"  {rule:24} {meaning}")
        print("\nregistered models (name: source, family, layers x experts, top-k)")
        for spec in REGISTRY.values():
            print(f"  {spec.name:20} {spec.source:48} {spec.family:15} {spec.n_layers}x{spec.n_experts} top-{spec.top_k}")
        return 0
    from moe_lib.core.capture import RoutingCapture
    from moe_lib.models.registry import load

    model, _ = load(args.model, revision=args.revision)
    cap = RoutingCapture(model)
    print(f"{args.model}: family {cap.family.model_type}, scoring {cap.family.scoring}")
    print(f"  MoE layers {cap.layers} of {model.config.num_hidden_layers}; {cap.n_experts} experts, top-{cap.top_k}")
    return 0
