"""End to end in a real headless browser: Debian's chromium driven by Playwright, against
the real app served by waitress on loopback, on a real library built with the tiny model.

``CLIPDEX_SCREENSHOT=docs/screenshot.png`` retakes the README's screenshot;
``CLIPDEX_SHOTS=DIR`` also keeps the phone, drop and empty-result screenshots there.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest
import waitress
from playwright.sync_api import expect

from clipdex.classify.tagging import tag_library
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.synthetic import COLORS, Sample, draw
from clipdex.web import create_app

HOSTILE = "<img src=x onerror=alert(1)>.jpg"
LONG_DIR = "Summer holidays at the cottage by the lake"
LONG_NAME = "IMG_4512.jpg"


def serve(app) -> tuple[waitress.server.BaseWSGIServer, str]:
    srv = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=srv.run, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.effective_port}"


@pytest.fixture(scope="module")
def e2e_library(tmp_path_factory, library, encoder) -> Path:
    """The shared library, plus a hostile file name and a long path, tagged by colour."""
    dest = tmp_path_factory.mktemp("e2e") / "lib"
    shutil.copytree(library.path, dest)
    extra = tmp_path_factory.mktemp("hostile")
    draw(Sample("orange", "triangle")).save(extra / HOSTILE, "JPEG")
    (extra / LONG_DIR).mkdir()
    draw(Sample("purple", "square")).save(extra / LONG_DIR / LONG_NAME, "JPEG")
    lib = Library.open(dest)
    Indexer(lib, TINY_MODEL, workers=1).run([str(extra)])
    tag_library(lib, encoder, list(COLORS))
    return dest


@pytest.fixture(scope="module")
def server(e2e_library):
    srv, url = serve(create_app({"LIBRARY": e2e_library}))
    yield url
    srv.close()


@pytest.fixture()
def page(browser, server):
    """A fresh page that records every request and every console error."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    pg = context.new_page()
    pg.alerts, pg.requests, pg.errors = [], [], []
    pg.on("dialog", lambda d: (pg.alerts.append(d.message), d.dismiss()))
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))
    yield pg
    context.close()


def shot(page, name: str, tmp_path: Path, env: str | None = None) -> Path:
    """Screenshot to ``$env`` if set, else to ``$CLIPDEX_SHOTS/name``, else to tmp_path."""
    target = os.environ.get(env or "") or (Path(os.environ["CLIPDEX_SHOTS"]) / name if os.environ.get("CLIPDEX_SHOTS")
                                             else tmp_path / name)
    page.screenshot(path=str(target))
    assert Path(target).stat().st_size > 5_000
    return Path(target)


def titles(page, n: int) -> list[str]:
    expect(page.locator("#grid .card").nth(n - 1)).to_be_attached()
    return [page.locator("#grid .card").nth(i).get_attribute("title") for i in range(n)]


# Predicates are functions, not expression strings: Playwright evaluates strings with eval(),
# which the page's Content-Security-Policy (rightly) forbids.
def images_loaded(page, selector: str, n: int = 1) -> None:
    page.wait_for_function(
        "([sel, n]) => [...document.querySelectorAll(sel)].slice(0, n).every(i => i.naturalWidth > 0)",
        arg=[selector, n])


def every_title_has(page, text: str) -> None:
    page.wait_for_function(
        "t => [...document.querySelectorAll('#grid .card')].every(c => c.title.includes(t))", arg=text)


def search(page, server, text: str) -> None:
    page.goto(server + "/")
    page.press("body", "/")  # keyboard shortcut to the search box
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("results for")


def test_type_a_query_and_see_the_right_thumbnails(page, server, tmp_path):
    search(page, server, "a red circle")
    assert re.search(r"\?q=a\+red\+circle$", page.url)
    assert all("/red/circle-" in t for t in titles(page, 5))
    # each card names the parent folder and the file, in full when it fits
    where = page.locator("#grid .card .where")
    shown = where.all_text_contents()[:5]
    assert len(shown) == 5 and all(re.fullmatch(r"red/circle-00\d\.jpg", t) for t in shown), shown
    assert where.evaluate_all("all => all.every(w => w.scrollWidth <= w.clientWidth)")  # nothing cut
    images_loaded(page, "#grid img", 12)
    page.locator("#q").blur()
    shot(page, "results.png", tmp_path, "CLIPDEX_SCREENSHOT")


def test_a_long_path_is_cut_at_its_start_so_the_name_stays(page, server):
    page.goto(server + "/?q=a+purple+square")
    card = page.locator("#grid .card", has_text=LONG_NAME)
    expect(card).to_have_attribute("title", re.compile(re.escape(f"/{LONG_DIR}/{LONG_NAME}") + "$"))
    expect(card.locator(".where")).to_have_text(f"{LONG_DIR}/{LONG_NAME}")
    where = card.locator(".where").evaluate("""w => {
        const box = w.getBoundingClientRect(), pad = parseFloat(getComputedStyle(w).paddingLeft);
        const name = w.querySelector('.name').getBoundingClientRect();
        const folder = w.querySelector('.folder').getBoundingClientRect();
        return {cut: w.scrollWidth > w.clientWidth, left: box.left + pad, right: box.right - pad,
                name: [name.left, name.right], folder: folder.left}; }""")
    assert where["cut"], where
    assert where["left"] <= where["name"][0] and where["name"][1] <= where["right"] + 0.5, where  # the name is whole
    assert where["folder"] < where["left"], where  # the folder's start is what the ellipsis hides


def test_detail_view_more_like_this_and_back(page, server, tmp_path):
    search(page, server, "a blue square")
    page.locator("#grid .card").first.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-path")).to_contain_text("/blue/square-")
    expect(page.locator("#detail-dims")).to_contain_text("×")
    expect(page.locator("#detail-tags li").first).to_contain_text("blue")
    name = page.locator("#detail-name").text_content()
    images_loaded(page, "#detail-img")
    page.click("#similar")
    expect(dialog).to_be_hidden()
    expect(page.locator("#status")).to_have_text("30 similar pictures")
    assert "similar=" in page.url
    # the reference picture is named and shown above the grid
    expect(page.locator("#reference h2")).to_have_text(f"Pictures like {name}")
    expect(page.locator("#ref-path")).to_contain_text(f"/blue/{name}")
    images_loaded(page, "#ref-img")
    assert page.locator("#ref-img").get_attribute("src").endswith("/thumbnail")
    assert all("/blue/square-" in t for t in titles(page, 4))
    shot(page, "similar.png", tmp_path)
    page.go_back()
    expect(page.locator("#status")).to_contain_text("for “a blue square”")
    expect(page.locator("#q")).to_have_value("a blue square")
    expect(page.locator("#reference")).to_be_hidden()


def test_escape_closes_the_detail_view(page, server):
    search(page, server, "a star")
    page.locator("#grid .card").first.click()
    expect(page.locator("#detail")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()


def test_filter_by_tag(page, server):
    search(page, server, "a circle")
    page.select_option("#tag", "green")
    expect(page.locator("#status")).to_contain_text("results for")
    assert "tag=green" in page.url
    every_title_has(page, "/green/")
    assert page.locator("#grid .card").count() > 0


def test_filters_in_a_bookmarked_url_are_applied(page, server):
    page.goto(server + "/?q=a+circle&tag=orange")
    expect(page.locator("#status")).to_contain_text("results for “a circle”")
    expect(page.locator("#tag")).to_have_value("orange")
    found = titles(page, page.locator("#grid .card").count())
    assert found and all("/orange/" in t or t.endswith(HOSTILE) for t in found), found


def test_more_results_only_when_there_are_more(page, server):
    page.goto(server + "/?q=a+circle")
    expect(page.locator("#grid .card")).to_have_count(30)
    expect(page.locator("#more")).to_be_visible()
    page.click("#more")
    expect(page.locator("#grid .card")).to_have_count(60)
    page.goto(server + "/?q=a+circle&tag=orange")  # about 20 orange pictures: one page
    expect(page.locator("#status")).to_contain_text("results for")
    assert page.locator("#grid .card").count() < 30
    expect(page.locator("#more")).to_be_hidden()


def test_upload_a_picture(page, server, tmp_path):
    query = tmp_path / "mine.png"
    draw(Sample("purple", "star"), (240, 240)).save(query)
    page.goto(server + "/")
    page.set_input_files("#upload", str(query))
    expect(page.locator("#status")).to_have_text("30 similar pictures")
    expect(page.locator("#reference h2")).to_have_text("Pictures like mine.png")
    assert page.locator("#ref-img").get_attribute("src").startswith("blob:")
    page.wait_for_function("() => document.getElementById('ref-img').naturalWidth === 240")
    assert all("/purple/star-" in t for t in titles(page, 4))
    page.select_option("#tag", "red")  # a filter re-runs the same picture search
    expect(page.locator("#reference h2")).to_have_text("Pictures like mine.png")
    every_title_has(page, "/red/")


def test_drop_a_picture_on_a_readable_overlay(page, server, tmp_path):
    search(page, server, "a yellow circle")
    buffer = io.BytesIO()
    draw(Sample("green", "triangle"), (200, 200)).save(buffer, "PNG")
    transfer = page.evaluate_handle("""b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        return data; }""", base64.b64encode(buffer.getvalue()).decode())
    page.dispatch_event("#grid", "dragover", {"dataTransfer": transfer})
    expect(page.locator("#drop-hint")).to_be_visible()
    panel, text, scrim = page.evaluate("""() => {
        const hint = document.getElementById('drop-hint'), s = getComputedStyle(hint.querySelector('p'));
        return [s.backgroundColor, s.color, getComputedStyle(hint).backgroundColor]; }""")
    assert panel == "rgb(255, 255, 255)" and contrast(text, panel) >= 7, (panel, text)
    assert alpha(scrim) >= 0.5, scrim  # the grid behind is dimmed, not competing with the text
    shot(page, "drop.png", tmp_path)
    page.dispatch_event("#grid", "drop", {"dataTransfer": transfer})
    expect(page.locator("#drop-hint")).to_be_hidden()
    expect(page.locator("#reference h2")).to_have_text("Pictures like dropped.png")
    expect(page.locator("#status")).to_have_text("30 similar pictures")
    assert all("/green/triangle-" in t for t in titles(page, 4))
    page.go_back()  # the drop is a new history entry: back returns to the text search
    expect(page.locator("#status")).to_contain_text("for “a yellow circle”")


def channels(css: str) -> list[float]:
    return [float(x) for x in re.findall(r"[\d.]+", css)]


def alpha(css: str) -> float:
    values = channels(css)
    return values[3] if len(values) == 4 else 1.0


def contrast(fg: str, bg: str) -> float:
    def luminance(css: str) -> float:
        linear = [(c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4)
                  for c in channels(css)[:3]]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    high, low = sorted([luminance(fg), luminance(bg)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_file_names_are_shown_as_text_never_run(page, server):
    search(page, server, "an orange triangle")
    assert HOSTILE in page.locator("#grid .card .name").all_text_contents()
    page.locator("#grid .card", has_text="onerror").click()
    expect(page.locator("#detail-name")).to_have_text(HOSTILE)
    assert page.alerts == []
    assert page.locator("#grid img[src='x']").count() == 0


def test_empty_results_name_the_filters_and_clear_them(page, server, tmp_path):
    page.goto(server + "/?q=a+circle&from=1990-01-01&to=1990-12-31")
    expect(page.locator("#status")).to_have_text("No results for “a circle”.")
    expect(page.locator("#empty-filters")).to_have_text("Filters in use: taken 1990-01-01 to 1990-12-31.")
    expect(page.locator("#empty-hints li")).to_have_text(
        ["122 pictures have no capture date and are left out by date filters."])
    shot(page, "empty.png", tmp_path)
    page.click("#clear-filters")
    expect(page.locator("#status")).to_have_text("30 results for “a circle”")
    assert page.url.endswith("/?q=a+circle")
    expect(page.locator("#from")).to_have_value("")
    expect(page.locator("#empty")).to_be_hidden()
    page.goto(server + "/?q=a+circle&tag=orang&folder=/nowhere")
    expect(page.locator("#empty-filters")).to_have_text("Filters in use: tag “orang” · folder /nowhere.")
    expect(page.locator("#empty-hints li")).to_have_text([
        "No picture has the tag “orang” (tags: orange, purple, blue, green, red, yellow).",
        "No indexed picture lies under /nowhere."])
    expect(page.locator("#tag")).to_have_value("orang")  # (":checked" trips Playwright over tagedit.js's nodes)
    expect(page.locator("#tag option[value='orang']")).to_have_text("orang (no pictures)")
    page.goto(server + "/?similar=999999")
    expect(page.locator("#error")).to_have_text("no picture with id 999999")


def test_slash_jumps_to_the_search_box_but_not_while_typing(page, server):
    page.goto(server + "/")
    page.click("#folder")
    page.keyboard.type("/tmp/pictures")
    expect(page.locator("#folder")).to_have_value("/tmp/pictures")
    page.click("main")
    page.keyboard.press("/")
    expect(page.locator("#q")).to_be_focused()


def test_phone_header_folds_the_filters(browser, server, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.goto(server + "/?q=a+yellow+square&tag=yellow&to=2100-01-01")
    expect(pg.locator("#status")).to_contain_text("for “a yellow square”")
    header = pg.locator("header").bounding_box()
    assert header["height"] <= 110, header
    toggle = pg.locator("#filters-toggle")
    expect(toggle).to_have_text("Filters 2")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(pg.locator("#filters")).to_be_hidden()
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(pg.locator("#tag")).to_be_visible()
    expect(pg.locator("#tag")).to_have_value("yellow")
    shot(pg, "phone-filters.png", tmp_path)
    toggle.click()
    expect(pg.locator("#filters")).to_be_hidden()
    pg.goto(server + "/?q=a+yellow+square")
    boxes = [pg.locator("#grid .card").nth(i).bounding_box() for i in range(3)]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[2]["y"] > boxes[0]["y"]  # two per row
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390
    expect(pg.locator("#filter-count")).to_be_hidden()
    images_loaded(pg, "#grid img", 4)
    shot(pg, "phone.png", tmp_path)
    context.close()


def test_demo_library_says_so_and_how_to_index_your_own(page, e2e_library, tmp_path):
    srv, url = serve(create_app({"LIBRARY": e2e_library, "DEMO": True, "WARM_UP": False}))
    try:
        page.goto(url + "/")
        expect(page.locator("#demo-banner")).to_have_text(
            "This is the demo library: generated shapes. Index your own pictures with clipdex index ~/Pictures, "
            "then restart clipdex serve.")
        page.goto(url + "/?q=a+green+square")
        images_loaded(page, "#grid img", 6)
        shot(page, "demo.png", tmp_path)
    finally:
        srv.close()


def test_no_library_yet_says_what_to_run(page, tmp_path):
    srv, url = serve(create_app({"LIBRARY": tmp_path / "none", "WARM_UP": False}))
    try:
        page.goto(url + "/")
        expect(page.locator("#no-library h2")).to_have_text("No library yet")
        expect(page.locator("#no-library")).to_contain_text(
            "Index a folder of your pictures with clipdex index ~/Pictures")
        expect(page.locator("#demo-banner")).to_have_count(0)
        shot(page, "no-library.png", tmp_path)
    finally:
        srv.close()


def test_everything_is_local_and_nothing_inline(page, server):
    page.goto(server + "/?q=a+green+star&tag=green")
    page.locator("#grid .card").first.click()
    images_loaded(page, "#detail-img")
    assert page.requests and all(u.startswith(server + "/") for u in page.requests), page.requests
    assert page.errors == []  # a Content-Security-Policy violation is reported as a console error
    with urllib.request.urlopen(server + "/") as response:
        html = response.read().decode()
    assert re.findall(r"<script(?![^>]*\ssrc=)|<style|\sstyle=|\son[a-z]+=", html, re.I) == []
