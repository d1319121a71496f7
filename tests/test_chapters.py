"""The site's chapters: listed and present, cross-references that resolve, inline code that
names defined values, and every chapter's cells executed in a Jupyter kernel (nbclient)
against the committed caches and, from an empty cache, on the tiny models.

Parameterised over every ``.qmd`` present, so chapters written later are tested too.
"""

import ast
import builtins
import os
from pathlib import Path

import browser_pages
import chapter_runner as runner
import page_checks
import pytest
import yaml

from moe_lib.core import cache

ROOT = runner.PROJECT_ROOT
PAGES = [ROOT / "index.qmd", *sorted((ROOT / "chapters").glob("*.qmd"))]
IDS = [str(p.relative_to(ROOT)) for p in PAGES]
TINY = ["standard-tiny", "cross-layer-tiny"]


def sidebar_pages(config: dict) -> list[str]:
    """Return every page the website's sidebar links to, in order."""
    found = []

    def walk(items):
        for item in items:
            if isinstance(item, str):
                found.append(item)
            elif "href" in item:
                found.append(item["href"])
            elif "contents" in item:
                walk(item["contents"])

    for sidebar in (lambda s: s if isinstance(s, list) else [s])(config["website"]["sidebar"]):
        walk(sidebar["contents"])
    return found


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "_quarto.yml").read_text())


def test_quarto_project_settings(config):
    assert config["project"]["type"] in ("website", "book")
    assert config["project"]["execute-dir"] == "project"
    assert config["execute"]["freeze"] == "auto"
    assert config["format"]["html"]["code-fold"] is True
    assert config["citation"] and config["google-scholar"] is True
    assert (ROOT / config["bibliography"]).is_file()


def test_a_render_leaves_the_clone_clean():
    # issue 14: `quarto render` writes _site/ and, for an interrupted page, X.quarto_ipynb
    import subprocess

    left = ["_site/index.html", "_site/chapters/paths.html", "chapters/paths.quarto_ipynb", "index.quarto_ipynb"]
    try:
        ignored = subprocess.run(["git", "check-ignore", *left], cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:
        pytest.skip("git is not installed")
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert sorted(ignored.stdout.split()) == sorted(left)


def test_the_site_is_cited_under_its_authors_literal_name(config):
    # issue 14: a plain name is split into given and family names: "moe_lib authors, The"
    assert config["author"] == [{"name": {"literal": "The moe_lib authors"}}]


def test_every_listed_chapter_exists_and_every_chapter_is_listed(config):
    listed = sidebar_pages(config)
    assert all((ROOT / page).is_file() for page in listed), [p for p in listed if not (ROOT / p).is_file()]
    present = {str(p.relative_to(ROOT)) for p in PAGES}
    assert present == set(listed), f"not listed: {present - set(listed)}; missing: {set(listed) - present}"


def test_chapter_reader_keeps_options_and_expands_includes():
    text = runner.read_chapter(ROOT / "chapters" / "routing-basics.qmd")
    cells = runner.cells(text)
    assert cells[0].options["tags"] == ["parameters"]
    assert cells[1].options["label"] == "setup"  # from /_includes/_setup.qmd
    assert "{{<" not in text
    notebook = runner.to_notebook(text, {"models": ["x"]})
    assert notebook.cells[1].source == "models = ['x']"
    assert notebook.cells[1].metadata["tags"] == ["injected-parameters"]


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_chapter_pattern(page):
    text = runner.read_chapter(page)
    cells = runner.cells(text)
    assert "parameters" in (cells[0].options.get("tags") or []), "the first cell must be tagged parameters"
    labels = [str(c.options.get("label", "")) for c in cells]
    assert "data" in labels and len(labels) == len(set(labels) - {""}) + labels.count("")
    for cell in cells:
        code = [line for line in cell.source.splitlines() if line.strip() and not line.startswith("#|")]
        assert len(code) <= 10, f"cell {cell.options.get('label')} has {len(code)} lines of code"
        if str(cell.options.get("label", "")).startswith("fig-"):
            assert cell.options.get("fig-cap") and cell.options.get("fig-alt"), cell.options["label"]
    assert "/work" not in text and "/tmp" not in text


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_figure_references_resolve_and_every_figure_is_cited(page):
    text = runner.read_chapter(page)
    labels, references = set(runner.figure_labels(text)), set(runner.figure_references(text))
    assert references <= labels, f"unresolved: {references - labels}"
    assert labels <= references, f"never cited: {labels - references}"


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_inline_expressions_name_values_defined_in_the_cells(page):
    text = runner.read_chapter(page)
    defined = set(dir(builtins))
    for cell in runner.cells(text):
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    for expression in runner.inline_expressions(text):
        names = {n.id for n in ast.walk(ast.parse(expression, mode="eval")) if isinstance(n, ast.Name)}
        assert names <= defined, f"`{{python}} {expression}` uses undefined {names - defined}"


def _check_run(page: Path, executed: runner.Executed) -> None:
    text = runner.read_chapter(page)
    for label in runner.figure_labels(text):
        assert executed.has_image(label), f"{page.name}: figure {label} produced no image"
    assert len(executed.inline_values) == len(runner.inline_expressions(text))
    for expression, value in executed.inline_values:
        assert value not in ("nan", "None", ""), f"{page.name}: `{{python}} {expression}` gave {value!r}"
        assert "nan" not in value.lower().split() and not value.startswith(("'", '"')), \
            f"{page.name}: `{{python}} {expression}` reads {value!r}"
    for problem in page_checks.output_problems(executed.notebook):
        pytest.fail(f"{page.name}: {problem}")


def committed_store_files() -> list[str]:
    """Return the files under data-cache/ that git tracks (what a fresh clone has)."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "data-cache"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return []
    return [f for f in listed if ".zarr/" in f]


@pytest.fixture(scope="module")
def committed_cache(tmp_path_factory):
    """A cache holding only the committed stores, and no model checkpoints: a fresh clone."""
    import shutil

    root = tmp_path_factory.mktemp("clone")
    for name in committed_store_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    patch = pytest.MonkeyPatch()
    patch.setenv("MOE_LIB_CACHE", str(root / "data-cache"))
    patch.setenv("MOE_LIB_MODELS", str(root / "models"))
    yield root / "data-cache"
    patch.undo()


@pytest.mark.slow
@pytest.mark.skipif(not committed_store_files(), reason="no committed stores under data-cache/ yet")
@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_chapter_runs_on_the_committed_caches(page, committed_cache, tmp_path):
    before = set(os.listdir(committed_cache))
    executed = runner.execute(page)
    _check_run(page, executed)
    # as in a fresh clone, nothing is computed: every store the chapter read was committed
    assert set(os.listdir(committed_cache)) == before
    # what a reader gets: the real tables and figures fit the page in Chromium (when installed)
    if browser_pages.browser_missing() is None:
        (tmp_path / "index.html").write_text(browser_pages.page_html(executed.notebook, page.stem), encoding="utf-8")
        with browser_pages.serve(tmp_path) as url:
            found = browser_pages.measure(f"{url}/index.html", tmp_path / "page.png")
        assert not browser_pages.layout_problems(found)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_chapter_runs_from_an_empty_cache_on_the_tiny_models(page, tiny_site):
    executed = tiny_site.execute(page)
    _check_run(page, executed)
    used = cache.list_stores(tiny_site.root / "cache")
    assert len(used) > 0 and set(used["model"]) - {""} <= set(tiny_site.MODELS)
