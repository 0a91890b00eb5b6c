"""End to end in a real headless browser: Debian's chromium driven by Playwright, against
the real app served by waitress on loopback, on a real library built with the tiny model."""

from __future__ import annotations

import os
import re
import shutil
import threading
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


@pytest.fixture(scope="module")
def server(tmp_path_factory, library, encoder):
    dest = tmp_path_factory.mktemp("e2e") / "lib"
    shutil.copytree(library.path, dest)
    extra = tmp_path_factory.mktemp("hostile")
    draw(Sample("orange", "triangle")).save(extra / HOSTILE, "JPEG")
    lib = Library.open(dest)
    Indexer(lib, TINY_MODEL, workers=1).run([str(extra)])
    tag_library(lib, encoder, list(COLORS))
    app = create_app({"LIBRARY": dest})
    srv = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.effective_port}"
    srv.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    pg = context.new_page()
    pg.alerts = []
    pg.on("dialog", lambda d: (pg.alerts.append(d.message), d.dismiss()))
    yield pg
    context.close()


def card_names(page) -> list[str]:
    return page.locator("#grid .card .name").all_text_contents()


def search(page, server, text: str) -> None:
    page.goto(server + "/")
    page.press("body", "/")  # keyboard shortcut to the search box
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("results for")


def test_type_a_query_and_see_the_right_thumbnails(page, server, tmp_path):
    search(page, server, "a red circle")
    assert re.search(r"\?q=a\+red\+circle$", page.url)
    first = page.locator("#grid .card").first
    expect(first).to_be_visible()
    titles = [page.locator("#grid .card").nth(i).get_attribute("title") for i in range(5)]
    assert all("/red/circle-" in t for t in titles), titles
    page.wait_for_function("[...document.querySelectorAll('#grid img')].slice(0, 5).every(i => i.naturalWidth > 0)")
    shot = Path(os.environ.get("CLIPDEX_SCREENSHOT", tmp_path / "results.png"))
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000


def test_detail_view_more_like_this_and_back(page, server):
    search(page, server, "a blue square")
    page.locator("#grid .card").first.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-path")).to_contain_text("/blue/square-")
    expect(page.locator("#detail-dims")).to_contain_text("×")
    expect(page.locator("#detail-tags li").first).to_contain_text("blue")
    page.wait_for_function("document.getElementById('detail-img').naturalWidth > 0")
    page.click("#similar")
    expect(dialog).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("like picture")
    assert "similar=" in page.url
    titles = [page.locator("#grid .card").nth(i).get_attribute("title") for i in range(4)]
    assert all("/blue/square-" in t for t in titles), titles
    page.go_back()
    expect(page.locator("#status")).to_contain_text("for “a blue square”")
    expect(page.locator("#q")).to_have_value("a blue square")


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
    page.wait_for_function("[...document.querySelectorAll('#grid .card')].every(c => c.title.includes('/green/'))")
    assert page.locator("#grid .card").count() > 0


def test_upload_a_picture(page, server, tmp_path):
    query = tmp_path / "mine.png"
    draw(Sample("purple", "star"), (240, 240)).save(query)
    page.goto(server + "/")
    page.set_input_files("#upload", str(query))
    expect(page.locator("#status")).to_contain_text("like mine.png")
    titles = [page.locator("#grid .card").nth(i).get_attribute("title") for i in range(4)]
    assert all("/purple/star-" in t for t in titles), titles


def test_file_names_are_shown_as_text_never_run(page, server):
    search(page, server, "an orange triangle")
    assert HOSTILE in card_names(page)
    page.locator("#grid .card", has_text="onerror").click()
    expect(page.locator("#detail-name")).to_have_text(HOSTILE)
    assert page.alerts == []
    assert page.locator("#grid img[src='x']").count() == 0


def test_no_results_and_errors_are_explained(page, server):
    page.goto(server + "/?q=a+circle&from=1990-01-01&to=1990-12-31")
    expect(page.locator("#status")).to_have_text("No results for “a circle”.")
    page.goto(server + "/?similar=999999")
    expect(page.locator("#error")).to_have_text("no picture with id 999999")


def test_phone_width(browser, server):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    pg = context.new_page()
    pg.goto(server + "/?q=a+yellow+square")
    expect(pg.locator("#status")).to_contain_text("results for")
    boxes = [pg.locator("#grid .card").nth(i).bounding_box() for i in range(3)]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[2]["y"] > boxes[0]["y"]  # two per row
    assert pg.evaluate("document.documentElement.scrollWidth") <= 375
    context.close()
