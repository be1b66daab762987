"""The web UI in headless Chromium (Playwright): browse, item page with look-alikes, photo search, jobs,
a merchandiser's feedback on the similar grid, the near-duplicate scan button.

The screenshot of an item page is kept next to the test's temp files; the test
asserts that every result image has really been decoded by the browser
(``naturalWidth > 0``), not only that the ``<img>`` tags exist.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import select

from core.db import FeedbackJudgement, FeedbackSource, Item, ItemImage, session_scope
from core.embedding import Embedder
from core.media import MediaStore
from service.apikeys import create_key
from tests.service.live import LiveServer
from tests.service.support import Catalog, embed, new_catalog, publish
from tests.worker.support import import_fmnist

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
RECORD_VIOLATIONS = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                     "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
ALL_LOADED = "imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture
def fmnist_catalog(service_settings, service_sessions) -> Catalog:
    """60 Fashion-MNIST items embedded with the (untrained) tiny model and published."""
    settings = service_settings.replace(database_url=service_settings.resolved_database_url)
    cat = new_catalog(settings, service_sessions)
    import_fmnist(settings, service_sessions, limit=60)
    store = MediaStore.from_settings(settings)
    with session_scope(service_sessions) as s:
        rows = s.execute(select(ItemImage.id, ItemImage.media_key, Item.external_id)
                         .join(Item).order_by(ItemImage.id)).all()
    for image_id, _, external_id in rows:
        cat.items[external_id] = {"image_ids": [image_id]}
    embedder = Embedder.from_checkpoint(settings.models_dir / f"{cat.model_version}.pt")
    embed(cat, [r[0] for r in rows], embedder.embed([store.open(r[1]) for r in rows]))
    publish(cat, [r[0] for r in rows])
    return cat


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def grid_images_loaded(page: Page, selector: str) -> int:
    page.wait_for_function(f"() => ({ALL_LOADED})(Array.from(document.querySelectorAll('{selector}')))",
                           timeout=15_000)
    widths = page.eval_on_selector_all(selector, "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths)
    return len(widths)


@pytest.mark.slow
def test_ui_in_chromium(fmnist_catalog: Catalog, browser: Browser, tmp_path: Path) -> None:
    server = LiveServer(fmnist_catalog.settings, tmp_path / "server.log", workers=1).start()
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        # catalog, browse by category
        page.goto(server.url + "/")
        assert page.locator("ul.categories a").count() == 11  # "All" + ten classes
        page.click("ul.categories >> text=sneaker")
        assert "category=sneaker" in page.url
        titles = page.locator("#catalog .title").all_inner_texts()
        assert titles and all(t.startswith("Sneaker") for t in titles)
        grid_images_loaded(page, "#catalog img")

        # an item page with its look-alikes, rendered
        page.click("#catalog li >> nth=0 >> a")
        assert "/items/fmnist-" in page.url
        assert grid_images_loaded(page, "#results img.thumb") == 12
        scores = page.locator("#results .score").all_inner_texts()
        assert len(scores) == 12 and all(s.startswith("score ") for s in scores)
        values = [float(s.split()[1]) for s in scores]
        assert values == sorted(values, reverse=True)
        shot = tmp_path / "item-page.png"
        page.screenshot(path=str(shot), full_page=True)
        with Image.open(shot) as image:
            assert image.width == 1200 and image.height > 600
            assert len(image.convert("L").getcolors(maxcolors=256) or range(256)) > 20  # photos, not a blank page

        # search by photo: the uploaded image is a catalog photo, so its item comes first
        photo = tmp_path / "query.png"
        first_external_id = next(iter(fmnist_catalog.items))
        key = _media_key(fmnist_catalog, fmnist_catalog.items[first_external_id]["image_ids"][0])
        photo.write_bytes(MediaStore.from_settings(fmnist_catalog.settings).path(key).read_bytes())
        page.goto(server.url + "/search")
        page.set_input_files("#image", str(photo))
        page.click("form.upload button")
        page.wait_for_selector("#results")
        assert grid_images_loaded(page, "#results img.thumb") == 12
        assert page.locator("#results .card a").first.get_attribute("href").endswith(f"/items/{first_external_id}")

        # a bad upload shows the API's message, not a crash
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not a picture")
        page.set_input_files("#image", str(bad))
        page.click("form.upload button")
        assert "not an image" in page.locator(".problem").inner_text()

        # job status page
        page.goto(server.url + "/jobs")
        assert fmnist_catalog.index_version in page.locator(".serving").inner_text()
    finally:
        server.stop()


def test_api_docs_render_the_spec_in_chromium(catalog: Catalog, browser: Browser, tmp_path: Path) -> None:
    """Swagger UI renders /api/v1/openapi.json: operations with their summaries, the description's
    markdown as markup (not raw ``**``), no CSP violation, no request to another host."""
    server = LiveServer(catalog.settings, tmp_path / "server.log", workers=1).start()
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.add_init_script(RECORD_VIOLATIONS)
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(server.url + "/api/v1/docs")
        similar = page.locator(".opblock-summary-path", has_text="/api/v1/items/{external_id}/similar")
        similar.first.wait_for(timeout=30_000)
        assert page.locator(".opblock-summary-description", has_text="Registered model versions").count() == 1
        intro = page.locator(".info .renderedMarkdown").first
        assert intro.locator("strong", has_text="Errors.").count() == 1
        assert "**Errors.**" not in intro.inner_text()
        similar.first.click()  # an operation opens with its parameters
        page.locator(".parameters-container .parameter__name", has_text="exclude_group").first.wait_for()
        assert page.evaluate("window.__csp") == []
        assert requested and all(url.startswith(server.url + "/") for url in requested), requested
        page.screenshot(path=str(tmp_path / "api-docs.png"), full_page=False)
    finally:
        server.stop()


def feedback_rows(server: LiveServer, **params: str) -> list[dict]:
    """The stored judgements, read back through the API (``GET /api/v1/feedback``)."""
    response = requests.get(server.url + "/api/v1/feedback", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["judgements"]


def card_ids(page: Page) -> list[str]:
    return page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.externalId)")


def test_merchandiser_feedback_in_chromium(catalog: Catalog, api_key: str, browser: Browser, tmp_path: Path) -> None:
    """Signed in with a key, "not similar" removes a result for good (the query-time filter),
    "good match" stores a ``similar`` mark (shown again after a reload), a click on a suggestion
    stores a ``click``; without a key there are no controls and nothing is sent; a wrong key
    shows the API's 401 message."""
    server = LiveServer(catalog.settings, tmp_path / "server.log", workers=1).start()
    query = "sku-001"
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.add_init_script(RECORD_VIOLATIONS)
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.goto(f"{server.url}/items/{query}")
        assert len(card_ids(page)) == 12
        assert page.locator("#merchandiser").is_visible()
        assert page.locator("#results .feedback button").count() == 0

        # no key: a click on a suggestion follows the link and records nothing
        first = card_ids(page)[0]
        page.click(f'#results .card[data-external-id="{first}"] a')
        page.wait_for_url(f"**/items/{first}")
        page.go_back()
        assert posts == [] and feedback_rows(server) == []

        # a wrong key: the API's 401 message, nothing stored, and the key is asked for again
        expected = requests.post(server.url + "/api/v1/feedback", headers={"X-API-Key": "lk_wrong"}, json={},
                                 timeout=10).json()["error"]["message"]
        page.fill("#api-key", "lk_wrong")
        page.click("#merchandiser .signed-out button")
        page.click("#results .card >> nth=0 >> .feedback .bad")
        problem = page.locator("#feedback-problem")
        problem.wait_for(state="visible")
        assert problem.inner_text() == expected == "the API key is unknown or revoked"
        assert len(card_ids(page)) == 12 and page.locator("#results .feedback").count() == 0
        assert page.locator("#api-key").is_visible()
        assert feedback_rows(server) == []

        # signed in: "not similar" removes the result, and a reload no longer shows it
        page.fill("#api-key", api_key)
        page.click("#merchandiser .signed-out button")
        assert page.locator("#results .feedback").count() == 12
        assert api_key not in page.url
        bad, good, clicked = card_ids(page)[:3]
        page.click(f'#results .card[data-external-id="{bad}"] .feedback .bad')
        page.locator(f'#results .card[data-external-id="{bad}"]').wait_for(state="detached")
        assert bad not in card_ids(page) and len(card_ids(page)) == 11
        assert not problem.is_visible()
        (row,) = feedback_rows(server, query=query)
        assert (row["result"], row["judgement"], row["source"]) == (
            bad, FeedbackJudgement.DISSIMILAR.value, FeedbackSource.MERCHANDISER.value)
        page.reload()
        assert bad not in card_ids(page) and len(card_ids(page)) == 12
        assert page.locator("#results .feedback").count() == 12  # still signed in, in this tab

        # "good match" keeps the result and stores a similar mark
        page.click(f'#results .card[data-external-id="{good}"] .feedback .good')
        page.locator(f'#results .card.good-match[data-external-id="{good}"]').wait_for()
        page.screenshot(path=str(tmp_path / "item-feedback.png"), full_page=True)
        marks = feedback_rows(server, query=query, judgement=FeedbackJudgement.SIMILAR.value)
        assert [(r["result"], r["source"]) for r in marks] == [(good, FeedbackSource.MERCHANDISER.value)]
        page.reload()  # the stored mark is shown again
        page.locator(f'#results .card.good-match[data-external-id="{good}"]').wait_for()
        assert page.locator("#results .card.good-match").count() == 1

        # a click on a suggestion, signed in, is recorded as a click while the browser follows it
        page.click(f'#results .card[data-external-id="{clicked}"] a')
        page.wait_for_url(f"**/items/{clicked}")
        deadline = time.monotonic() + 10
        while not (clicks := feedback_rows(server, source=FeedbackSource.CLICK.value)) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [(r["query"], r["result"], r["judgement"]) for r in clicks] == [
            (query, clicked, FeedbackJudgement.SIMILAR.value)]

        # signing out removes the controls
        page.go_back()
        page.click("#sign-out")
        assert page.locator("#results .feedback").count() == 0 and page.locator("#api-key").is_visible()
        assert page.locator("#results .card.good-match").count() == 0
        assert page.evaluate("window.__csp") == []
        assert len(feedback_rows(server)) == 3

        # without JavaScript the page still works, with no sign-in form and no controls
        plain = browser.new_context(java_script_enabled=False).new_page()
        plain.goto(f"{server.url}/items/{query}")
        shown = card_ids_without_js(plain)
        assert len(shown) == 12 and bad not in shown and {good, clicked} <= set(shown)
        assert not plain.locator("#merchandiser").is_visible()
        assert plain.locator("#results .feedback").count() == 0
    finally:
        server.stop()


def card_ids_without_js(page: Page) -> list[str]:
    return [c.get_attribute("data-external-id") or "" for c in page.locator("#results .card").all()]


def _media_key(cat: Catalog, image_id: int) -> str:
    with session_scope(cat.sessions) as s:
        return s.scalar(select(ItemImage.media_key).where(ItemImage.id == image_id))


def test_duplicate_scan_button_in_chromium(fmnist_catalog: Catalog, browser: Browser, tmp_path: Path) -> None:
    """No scan yet: the page says how to start one; signed in with a write key, the button starts a
    scan job, shows its progress, and the page then shows that scan (its job, its index)."""
    key, _ = create_key(fmnist_catalog.sessions, "merchandiser")
    server = LiveServer(fmnist_catalog.settings, tmp_path / "server.log", workers=1).start()
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.add_init_script(RECORD_VIOLATIONS)
        page.goto(f"{server.url}/duplicates")
        assert "no near-duplicate scan has run yet" in page.inner_text("main")
        assert not page.locator("#start-scan").is_visible()
        page.fill("#api-key", key)
        page.click("#scan .signed-out button")
        assert key not in page.url
        page.click("#start-scan")
        page.locator("#scan-progress").wait_for(state="visible")
        assert "Scan job" in page.inner_text("#scan-progress")
        page.locator("#scan-summary").wait_for(state="visible", timeout=60_000)  # the reload after success
        jobs = requests.get(server.url + "/api/v1/jobs", params={"kind": "duplicates"},
                            headers={"X-API-Key": key}, timeout=10).json()["jobs"]
        assert len(jobs) == 1 and jobs[0]["status"] == "succeeded"
        summary = page.inner_text("#scan-summary")
        assert f"Scan job {jobs[0]['id']}" in summary and fmnist_catalog.index_version in summary
        assert "no longer the active index" not in summary
        assert page.locator("#start-scan").is_visible()  # still signed in, in this tab
        page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)
        assert page.evaluate("window.__csp") == []
    finally:
        server.stop()
