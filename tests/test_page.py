"""The page at ``/`` in a real browser: Debian's chromium, headless, driven by Selenium + chromium-driver.

Loads the page from a live uvicorn, types a query, clicks a result, builds a history and an outfit, ranks
coupons, and checks each rendered list against the Python API on the same directory. Screenshots of the
desktop (1280x800) and phone (390x844) views go to $TEXTGUIDE_SCREENSHOT_DIR when set (docs/ for the README).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve,serve-test]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[serve-test]'")

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from textguide import Guide
from textguide.adapters import AdapterConfig, MultiTaskAdapter
from textguide.catalog import ColumnMap, load_catalog, sample_catalog_path
from textguide.encoder import HashingEncoder
from textguide.serve import BackgroundServer, ServeConfig, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian chromium + chromium-driver not installed (scripts/install.sh installs them with apt where it can)",
)
SLOTS = ["upper", "bottom", "full", "shoe", "bag", "accessory"]
COUPONS = {"summer-linen": ["tg-0004"], "shoes-10": ["tg-0051", "tg-0052"], "home-15": ["tg-0251", "tg-0252"]}


@pytest.fixture(scope="module")
def guide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample catalog (325 products) with an untrained adapter (all three tasks) and three coupons."""
    enc = HashingEncoder(dim=64)
    cat = load_catalog(sample_catalog_path(), ColumnMap(extra=("slot", "color")))
    g = Guide.build(cat, enc)
    torch.manual_seed(0)
    g.set_adapter(MultiTaskAdapter(AdapterConfig(input_dim=64, dim=16, seq_heads=2, n_slots=len(SLOTS), profile_dim=64)),
                  {"slot_field": "slot", "slots": SLOTS, "profile": "text"})
    g.add_coupons({c: [i for i in items if i in g.index] for c, items in COUPONS.items()}, save=False)
    path = tmp_path_factory.mktemp("page") / "sample"
    g.save(path)
    return path


@pytest.fixture(scope="module")
def server(guide_dir: Path):
    app = create_app([guide_dir], None, encoder=HashingEncoder(dim=64), config=ServeConfig(refresh_seconds=0))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", "--hide-scrollbars", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    except WebDriverException as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"chromium is installed but cannot start headless here: {e.msg}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def hit_ids(driver, list_id: str) -> list[str]:
    """The ids a list shows, read in one script call (the list may be re-rendered between element lookups)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), (li) => li.dataset.id)", f"#{list_id} li.hit")


def wait_for(driver, fn, timeout: float = 15):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: fn(d))


def wait_ids(driver, list_id: str, expected: list[str]) -> None:
    try:
        wait_for(driver, lambda d: hit_ids(d, list_id) == expected)
    except Exception:  # noqa: BLE001 - show what the page rendered instead
        raise AssertionError(f"#{list_id}: rendered {hit_ids(driver, list_id)}, expected {expected}; status: "
                             f"{driver.find_element(By.ID, list_id.replace('results', 'search') + '-status').text!r}")


def screenshot(driver, name: str) -> None:
    out = os.environ.get("TEXTGUIDE_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(out) / name))


def test_page_search_click_similar_recommend_outfit_coupons(server, browser, guide_dir: Path) -> None:
    truth = Guide.load(guide_dir, HashingEncoder(dim=64))
    d = browser
    d.set_window_size(1280, 800)
    d.get(server.url + "/")
    wait_for(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert Select(d.find_element(By.ID, "guide")).first_selected_option.get_attribute("value") == "sample"
    assert "325 items" in d.find_element(By.ID, "guide-info").text

    # search as you type
    d.find_element(By.ID, "q").send_keys("linen shirt for the beach")
    expected = truth.search("linen shirt for the beach", k=12)
    wait_ids(d, "results", expected.ids)
    first = d.find_elements(By.CSS_SELECTOR, "#results li.hit")[0]
    assert first.find_element(By.CLASS_NAME, "title").text == expected.items[0]["title"]
    assert first.find_element(By.CLASS_NAME, "score").text == f"{expected.scores[0]:.3f}"

    # click a product -> similar items
    first.click()
    wait_ids(d, "similar", truth.similar(expected.ids[0], k=8).ids)
    assert expected.items[0]["title"] in d.find_element(By.ID, "similar-status").text
    assert d.find_element(By.ID, "similar-method").text == "text"

    # two clicks on "+ history" -> recommend
    rows = d.find_elements(By.CSS_SELECTOR, "#results li.hit")
    for li in rows[:2]:
        li.find_element(By.CLASS_NAME, "add-history").click()
    wait_ids(d, "recommend", truth.recommend(expected.ids[:2], k=8, on_unknown="skip").ids)
    assert len(d.find_elements(By.CSS_SELECTOR, "#history .chip")) == 2
    assert d.find_element(By.ID, "recommend-method").text == "adapter"

    # "+ outfit", then a slot -> complete_outfit within that slot
    rows[0].find_element(By.CLASS_NAME, "add-outfit").click()
    Select(d.find_element(By.ID, "slot")).select_by_value("shoe")
    outfit = truth.complete_outfit(expected.ids[:1], k=8, slot="shoe", on_unknown="skip")
    wait_ids(d, "complete", outfit.ids)
    assert {i["slot"] for i in outfit.items} == {"shoe"}

    # a household's coupons (the history above + a profile)
    assert d.find_element(By.ID, "coupon-panel").is_displayed()
    d.find_element(By.NAME, "age").send_keys("35-44")
    d.find_element(By.NAME, "kids_count").send_keys("2")
    d.find_element(By.CSS_SELECTOR, "#profile button").click()
    coupons = truth.rank_coupons(expected.ids[:2], profile={"age": "35-44", "kids_count": "2"}, on_unknown="skip")
    wait_ids(d, "coupons", coupons.ids)

    # tidy at 1280x800: results on the left, the task panels beside them, nothing wider than the window
    search_box = d.find_element(By.ID, "search-panel").rect
    similar_box = d.find_element(By.ID, "similar-panel").rect
    assert similar_box["x"] >= search_box["x"] + search_box["width"]
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    d.execute_script("window.scrollTo(0, 0)")
    screenshot(d, "serve_page_desktop.png")

    # phone width: one column, no sideways scrolling
    d.set_window_size(390, 844)
    wait_for(d, lambda d: d.find_element(By.ID, "similar-panel").rect["y"] > d.find_element(By.ID, "search-panel").rect["y"])
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    panel = d.find_element(By.ID, "search-panel").rect
    assert panel["width"] <= 390
    d.execute_script("window.scrollTo(0, 0)")
    screenshot(d, "serve_page_phone.png")
    d.set_window_size(1280, 800)


def test_page_shows_api_errors(server, browser) -> None:
    """An answer the API refuses is shown on the page, not swallowed (here: a query over the length limit)."""
    d = browser
    d.get(server.url + "/")
    wait_for(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    d.execute_script("const q = document.getElementById('q'); q.value = 'x'.repeat(2500);"
                     "q.dispatchEvent(new Event('input'));")
    wait_for(d, lambda d: "at most 2000 characters" in d.find_element(By.ID, "search-status").text)
    assert "error" in d.find_element(By.ID, "search-status").get_attribute("class")
