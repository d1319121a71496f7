"""The executed pages as a reader sees them in Chromium at 1280 px (issue 14): no table wider
than its column, every figure shown at its own pixel width, a screenshot of each page.

The pages run on the tiny models from an empty cache (shared with test_chapters.py), are
converted to HTML by nbconvert and served on 127.0.0.1. Set MOE_LIB_SCREENSHOTS=DIR to keep
the screenshots. The pages run on the committed caches (the site's real tables, wider than
the tiny ones) are measured the same way in test_chapters.py.
"""

import os
from pathlib import Path

import browser_pages
import pytest

from moe_lib import plots

ROOT = Path(__file__).resolve().parents[1]
# The pages with the widest tables and figures: the model table, a wide figure and a layer
# table, folded token tables, the ablation grid's intervals.
PAGES = [ROOT / "index.qmd", ROOT / "chapters" / "routing-basics.qmd", ROOT / "chapters" / "specialization.qmd",
         ROOT / "chapters" / "ablations.qmd"]

requires_browser = pytest.mark.skipif(browser_pages.browser_missing() is not None,
                                      reason=browser_pages.browser_missing() or "")


def test_the_frame_has_room_for_the_site_figures():
    assert plots.figure_width_px() <= browser_pages.COLUMN_WIDTH
    assert plots.figure_width_px(wide=True) <= browser_pages.WIDE_WIDTH


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    kept = os.environ.get("MOE_LIB_SCREENSHOTS")
    folder = Path(kept) if kept else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow
@requires_browser
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_fits_its_columns_in_chromium(page, tiny_site, screenshots, tmp_path):
    executed = tiny_site.execute(page)
    (tmp_path / "index.html").write_text(browser_pages.page_html(executed.notebook, page.stem), encoding="utf-8")
    shot = screenshots / f"{page.stem}.png"
    with browser_pages.serve(tmp_path) as url:
        found = browser_pages.measure(f"{url}/index.html", shot)
    assert found, f"{page.name}: nothing measured"
    assert not browser_pages.layout_problems(found)
    width, height = browser_pages.screenshot_size(shot)
    assert width == browser_pages.WINDOW_WIDTH and height > 600
    assert shot.stat().st_size > 20_000  # a page of figures and tables, not a blank one
