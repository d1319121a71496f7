"""`python -m moe_lib COMMAND`: one entry point, one module per command.

Each module in COMMAND_MODULES defines ``add_command(subparsers)``, which adds its parser
and sets ``func`` (taking the parsed args, returning an exit code). Modules are imported
only when listed, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Offline by default: without it every hub look-up retries for about 25 s on a machine
# with no hub. A user with hub access sets HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMMAND_MODULES = [
    "moe_lib.commands.trace",
    "moe_lib.commands.cache",
    "moe_lib.commands.info",
    "moe_lib.commands.corpus",
    "moe_lib.commands.tokenizer",
    "moe_lib.commands.datasets",
    "moe_lib.commands.vocab",
    "moe_lib.commands.train",
    "moe_lib.commands.ablate",
    "moe_lib.commands.preflight",
    "moe_lib.commands.build",
    "moe_lib.commands.importance",
    "moe_lib.commands.prune",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moe_lib",
        description="Capture, cache and analyse expert routing in Mixture-of-Experts models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, RuntimeError) as error:
        # moe_lib's own errors name the file, field and value: say that, not a traceback
        print(f"python -m moe_lib {args.command}: error: {error}", file=sys.stderr)
        return 1
