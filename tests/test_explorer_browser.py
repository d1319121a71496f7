"""The routing explorer in a real browser (issue 14): Debian's headless Chromium, driven by
Selenium through chromedriver, loads the page from disk with the network off, and a reader's
clicks show what the data say.

The page is the widget :mod:`moe_lib.site.explorer_page` makes, the same HTML the chapter
cell displays; the slow test takes it from the executed chapter itself. Skipped where
Chromium, chromedriver or Selenium is missing (``.ci/run`` installs them as root).
"""

import json
import os
import shutil
from pathlib import Path

import browser_pages
import pytest
from test_explorer import MEANINGS, _tables, contextual_trace, domains_trace

from moe_lib.site import explorer_page

if browser_pages.browser_missing():
    pytest.skip(browser_pages.browser_missing(), allow_module_level=True)
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

CHROMIUM, CHROMEDRIVER = browser_pages.chromium(), shutil.which("chromedriver")
WINDOW = (1200, 1600)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with every network request failing: no proxy reachable, no name resolved."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A standalone explorer of one synthetic model on disk, and its data."""
    tables = _tables([("m1", contextual_trace(), domains_trace())])
    data = explorer_page.page_data(*tables)
    path = tmp_path_factory.mktemp("explorer") / "explorer.html"
    path.write_text(explorer_page.standalone_html(explorer_page.widget_html(data)), encoding="utf-8")
    return path, data["models"][0]


def open_page(browser, path: Path) -> None:
    """Load a page from disk; fail on any script error or any resource fetched beside the file."""
    browser.get(path.as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def choose(browser, testid: str, text: str) -> None:
    Select(browser.find_element(By.CSS_SELECTOR, f"[data-testid={testid}]")).select_by_visible_text(text)


def test_a_token_and_meaning_show_their_occurrences_and_shared_routes(browser, page, tmp_path):
    path, model = page
    open_page(browser, path)
    target = next(t for t in model["targets"] if t["target"] == " bank")
    river = next(m for m in target["meanings"] if m["meaning"] == "river")
    choose(browser, "select-target", json.dumps(" bank"))
    choose(browser, "select-meaning", f"river ({river['n_occurrences']})")
    shown = browser.find_elements(By.CSS_SELECTOR, "[data-testid=occurrence]")
    assert len(shown) == len(river["occurrences"]) == explorer_page.N_PER_MEANING
    assert f"{river['n_occurrences']} occurrences in the probe" in \
        browser.find_element(By.CSS_SELECTOR, "[data-testid=token-summary]").text
    first = river["occurrences"][0]
    chips = shown[0].find_elements(By.CSS_SELECTOR, "[data-testid=route-chip]")
    assert [int(c.text) for c in chips] == first["route"]
    centre = shown[0].find_element(By.CSS_SELECTOR, ".mx-centre")
    assert centre.text.strip() == "bank" and "mx-mark-1" in centre.get_attribute("class")
    rows = browser.find_elements(By.CSS_SELECTOR, "[data-testid=shared-routes] tbody tr")
    assert len(rows) == min(explorer_page.MAX_ROUTES_SHOWN, river["n_routes"])
    most = max(r["counts"].get("river", 0) for r in target["routes"])
    assert int(rows[0].find_elements(By.TAG_NAME, "td")[1].text) == most
    screenshot = tmp_path / "tokens.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 30_000


def test_an_expert_shows_its_top_tokens_domains_examples_and_card_link(browser, page, tmp_path):
    path, model = page
    open_page(browser, path)
    browser.find_element(By.CSS_SELECTOR, "[data-testid=tab-experts]").click()
    choose(browser, "select-layer", "2")
    choose(browser, "select-expert", "5")
    expert = model["experts"][2][5]
    cells = browser.find_elements(By.CSS_SELECTOR, "[data-testid=top-tokens] tbody tr td:first-child")
    assert [c.text for c in cells] == [json.dumps(t) for t, _, _ in expert["top_tokens"]]
    domains = browser.find_elements(By.CSS_SELECTOR, "[data-testid=domain-shares] tbody tr")
    assert [d.find_element(By.TAG_NAME, "td").text for d in domains] == [d for d, _, _ in expert["domains"]]
    examples = browser.find_elements(By.CSS_SELECTOR, "[data-testid=examples] li")
    assert len(examples) == len(expert["examples"]) and all(e.find_elements(By.CSS_SELECTOR, ".mx-mark-1")
                                                             for e in examples)
    link = browser.find_element(By.CSS_SELECTOR, "[data-testid=card-link]").get_attribute("href")
    assert link.endswith(f"{explorer_page.CARDS_PAGE}#m1-L2-E5")
    screenshot = tmp_path / "experts.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 30_000


def test_a_route_chip_opens_its_expert(browser, page):
    path, _ = page
    open_page(browser, path)
    chip = browser.find_elements(By.CSS_SELECTOR, "[data-testid=occurrence] [data-testid=route-chip]")[1]
    expert = int(chip.text)  # the second chip: layer 1's expert of the first occurrence
    chip.click()
    assert "Expert " + str(expert) + " of layer 1 " in browser.find_element(By.CSS_SELECTOR,
                                                                             "[data-testid=expert-summary]").text
    assert Select(browser.find_element(By.CSS_SELECTOR, "[data-testid=select-expert]")).first_selected_option.text \
        == str(expert)


def test_the_token_list_offers_every_target(browser, page):
    path, _ = page
    open_page(browser, path)
    options = Select(browser.find_element(By.CSS_SELECTOR, "[data-testid=select-target]")).options
    assert sorted(o.text for o in options) == sorted(json.dumps(t) for t in MEANINGS)


def chapter_widget(parameters: dict | None = None) -> str:
    """Return the HTML the explorer chapter's ``explorer`` cell displays, executed as a render would."""
    import chapter_runner as runner

    # From an empty cache the data cell trains and traces both tiny models: minutes on a busy machine.
    executed = runner.execute(runner.PROJECT_ROOT / "chapters" / "explorer.qmd", parameters, timeout=1800)
    (html,) = [o["data"]["text/html"] for o in executed.outputs_of("explorer") if "text/html" in o.get("data", {})]
    return html


def check_widget(browser, html: str, folder: Path, name: str) -> None:
    """Load a chapter's widget from disk and walk it: a token's occurrences, then an expert's
    tokens; screenshots go to $MOE_LIB_SCREENSHOTS when set (as in test_pages_in_browser.py)."""
    shots = Path(os.environ.get("MOE_LIB_SCREENSHOTS") or folder)
    shots.mkdir(parents=True, exist_ok=True)
    path = folder / "explorer.html"
    path.write_text(explorer_page.standalone_html(html), encoding="utf-8")
    open_page(browser, path)
    choose(browser, "select-target", json.dumps(" bank"))
    summary = browser.find_element(By.CSS_SELECTOR, "[data-testid=token-summary]").text
    shown = browser.find_elements(By.CSS_SELECTOR, "[data-testid=occurrence]")
    assert shown and f"{len(shown)} of the " in browser.find_element(By.CSS_SELECTOR, "[data-testid=panel-tokens]").text
    assert "occurrences in the probe" in summary
    assert browser.save_screenshot(str(shots / f"explorer-{name}-tokens.png"))
    browser.find_element(By.CSS_SELECTOR, "[data-testid=tab-experts]").click()
    assert browser.find_elements(By.CSS_SELECTOR, "[data-testid=top-tokens] tbody tr")
    assert browser.save_screenshot(str(shots / f"explorer-{name}-experts.png"))


@pytest.fixture(scope="module")
def empty_cache_with_tiny_corpus(tmp_path_factory):
    from moe_lib.site.probes import tiny_corpus

    root = tmp_path_factory.mktemp("tiny")
    patch = pytest.MonkeyPatch()
    patch.setenv("MOE_LIB_CACHE", str(root / "cache"))
    patch.setenv("MOE_LIB_MODELS", str(root / "models"))
    patch.setenv("MOE_LIB_CORPUS", str(tiny_corpus(root / "corpus")))
    yield root
    patch.undo()


@pytest.mark.slow
def test_the_chapters_own_widget_works_in_the_browser(browser, empty_cache_with_tiny_corpus, tmp_path):
    check_widget(browser, chapter_widget({"models": ["standard-tiny", "cross-layer-tiny"]}), tmp_path, "tiny")


def committed_explorer_stores() -> list[str]:
    from test_chapters import committed_store_files

    return [f for f in committed_store_files() if Path(f).parts[1].startswith("explorer-")]


@pytest.mark.slow
@pytest.mark.skipif(not committed_explorer_stores(), reason="the explorer's stores are not committed yet "
                                                            "(python -m moe_lib build, then git add -f)")
def test_the_explorer_works_on_the_committed_data(browser, tmp_path):
    from test_chapters import ROOT, committed_store_files

    for name in committed_store_files():  # a fresh clone's cache: the committed stores, no models
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    patch = pytest.MonkeyPatch()
    patch.setenv("MOE_LIB_CACHE", str(tmp_path / "data-cache"))
    patch.setenv("MOE_LIB_MODELS", str(tmp_path / "models"))
    try:
        html = chapter_widget()
    finally:
        patch.undo()
    check_widget(browser, html, tmp_path, "committed")
