"""The package's folders keep the flow the README's "Architecture" section draws (issue 11).

Every import of every module, function bodies included, is checked against the layer rules:
a lower layer never imports a higher one, analyses over traces never touch a model, and only
the site layer (and the commands above it) knows the chapters.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moe_lib"

# What each part of the package may import from moe_lib, besides itself. Read bottom-up:
# data and models are the ground, the core captures and caches, analysis / interventions /
# training build on the core, plots draw tables, the site feeds the chapters, commands on top.
MAY_IMPORT = {
    "data": set(),
    "models": {"data"},
    "core": {"models", "data"},
    "analysis": {"core.schema"},
    "interventions": {"core", "models", "data", "analysis"},
    "training": {"core", "models", "data"},
    "plots": set(),
    "site": {"core", "models", "data", "analysis", "interventions", "training", "plots"},
    "commands": {"*"},
    "cli": {"*"},
    "__main__": {"*"},
    "__init__": {"core", "interventions", "models"},
}
# Libraries that run models: an analysis over traces imports neither.
MODEL_LIBRARIES = {"torch", "transformers", "accelerate", "safetensors"}


def part_of(module: str) -> str:
    """Return the layer of a dotted moe_lib module name: its first component after moe_lib."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """Return ``(line, module)`` for every import in a file of the package at ``root``, at any
    depth, relative ones resolved."""
    module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from moe_lib import site` imports the module moe_lib.site
            found += [(node.lineno, f"{base}.{alias.name}") if base == "moe_lib" else (node.lineno, base)
                      for alias in node.names]
    return found


def target_part(module: str) -> str | None:
    """Return the layer an imported moe_lib module belongs to (``version`` for the package's
    ``__version__``), or None for modules outside moe_lib."""
    if not module.startswith("moe_lib"):
        return None
    if module == "moe_lib.__version__":
        return "version"
    return part_of(module) if module != "moe_lib" else "__init__"


def allowed(source: str, module: str) -> bool:
    rules = MAY_IMPORT[source]
    target = target_part(module)
    if target in (None, source, "version") or "*" in rules:  # the package's version is for all
        return True
    return target in rules or any(module == f"moe_lib.{rule}" or module.startswith(f"moe_lib.{rule}.")
                                  for rule in rules if "." in rule)


def violations(root: Path = PACKAGE) -> list[str]:
    """Return one line per import that breaks a rule, naming file, line and module."""
    broken = []
    for path in sorted(root.rglob("*.py")):
        source = part_of(".".join(path.relative_to(root.parent).with_suffix("").parts))
        if source not in MAY_IMPORT:
            broken.append(f"{path.relative_to(root.parent)}: not in any layer of MAY_IMPORT")
            continue
        for line, module in imports_of(path, root):
            if not allowed(source, module):
                broken.append(f"{path.relative_to(root.parent)}:{line}: {source} imports {module}")
            if source == "analysis" and module.split(".")[0] in MODEL_LIBRARIES:
                broken.append(f"{path.relative_to(root.parent)}:{line}: an analysis over traces imports {module}")
    return broken


def test_every_module_keeps_the_layer_rules():
    assert violations() == []


def test_only_the_site_and_the_commands_name_chapter_files():
    chapter_path = re.compile(r"\.qmd\b|[\"'/]chapters/")
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in PACKAGE.rglob("*.py") if part_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)) not in
        ("site", "commands")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if chapter_path.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize(("layer", "code", "broken"), [
    ("core", "from moe_lib.training import train\n", True),
    ("core", "def f():\n    from moe_lib.site import tables\n", True),  # lazy imports count too
    ("models", "from moe_lib.analysis import paths\n", True),
    ("analysis", "import torch\n", True),
    ("analysis", "from moe_lib.models.registry import load\n", True),
    ("analysis", "from moe_lib.core.schema import TOKEN\n", False),
    ("analysis", "from . import common\n", False),
    ("training", "from ..site import trace\n", True),  # relative imports resolve
    ("site", "from moe_lib.commands import build\n", True),
    ("site", "from moe_lib import __version__, site\n", False),
])
def test_the_rule_check_catches_a_broken_import(tmp_path, layer, code, broken):
    package = tmp_path / "moe_lib"
    (package / layer).mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / layer / "__init__.py").write_text("")
    (package / layer / "module.py").write_text(code)
    assert bool(violations(package)) == broken


def test_the_readme_lists_every_package_of_the_tree():
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__")}
    for name in packages | modules:
        assert f"`{name}" in section, f"README's Architecture section does not mention {name}"
    assert set(MAY_IMPORT) - {"__main__", "__init__"} == packages | modules
