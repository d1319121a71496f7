"""`python -m moe_lib cache ls`: what the cache holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_command(subparsers) -> None:
    parser = subparsers.add_parser("cache", help="list the stores in the cache", description=__doc__)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("ls", help="one line per complete store", description="List cached stores.")
    ls.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    ls.add_argument("--dir", type=Path, help="cache folder (default: $MOE_LIB_CACHE or data-cache/)")
    ls.set_defaults(func=run_ls)


def run_ls(args: argparse.Namespace) -> int:
    from moe_lib.core.cache import interrupted_writes, list_stores

    stores = list_stores(args.dir)
    if args.json:
        print(json.dumps(stores.drop(columns="path").to_dict(orient="records"), indent=1))
        return 0
    if stores.empty:
        print("no stores")
    else:
        print(stores.drop(columns="path").to_string(index=False))
    for partial in interrupted_writes(args.dir):
        print(f"interrupted (resumes on the next run): {partial.name}")
    return 0
