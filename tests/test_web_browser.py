"""The page in a real browser (Debian's chromium, driven by Playwright) over a shapes-world library.

Skipped when chromium or Playwright is missing, unless BLIPSEARCH_REQUIRE_BROWSER=1 (as in CI),
which makes that a failure. Screenshots of the run go to BLIPSEARCH_SCREENSHOTS (default:
test-screenshots/ in the repository).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import urllib.request
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest

from blipsearch import Library
from blipsearch.web import ServeSettings

CHROMIUM = os.environ.get("BLIPSEARCH_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("BLIPSEARCH_REQUIRE_BROWSER") == "1"
SHOTS = Path(os.environ.get("BLIPSEARCH_SCREENSHOTS", Path(__file__).parent.parent / "test-screenshots"))
QUERY = "a red circle left of a blue square"

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None

if not REQUIRED and (sync_playwright is None or not os.path.exists(CHROMIUM)):
    pytest.skip(f"needs Playwright and chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


STARRED = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
           'xmp:Rating="5"><dc:subject><rdf:Bag><rdf:li>Família</rdf:li></rdf:Bag></dc:subject>'
           "</rdf:Description></rdf:RDF></x:xmpmeta>")


@pytest.fixture(scope="module")
def shapes_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 shapes-world scenes in two trips, indexed, tagged with their own descriptions (the
    built-in model matches whole scene descriptions, not single shapes, with confidence)."""
    from blipsearch.shapes.world import generate

    root = tmp_path_factory.mktemp("shapes")
    photos = root / "photos"
    scenes = generate("test", 48, seed=5)
    for n, scene in enumerate(scenes):
        folder = photos / ("trip-a" if n % 2 else "trip-b")
        folder.mkdir(parents=True, exist_ok=True)
        scene.image.save(folder / f"scene-{n:03d}.png")
        if n % 6 == 0:  # a photo manager's five stars and keyword for every sixth scene (all of trip-b)
            (folder / f"scene-{n:03d}.png.xmp").write_text(STARRED)
        taken = datetime(2024, 1 + n % 4, 10 + n % 7, 12).timestamp()  # four months: date headings
        os.utime(folder / f"scene-{n:03d}.png", (taken, taken))
    with Library(root / "library", model="builtin:shapes", device="cpu") as lib:
        lib.index([photos])
        lib.tag_library(sorted({s.captions[0] for s in scenes}), template="{}", k=1)
    (root / "tag.txt").write_text(scenes[0].captions[0])  # a scene of trip-b
    from blipsearch.shapes.world import partial_descriptions

    # The partial description ("a red circle") most of these scenes show: a set of several photos.
    partial = max(partial_descriptions(), key=lambda text: sum(scene.satisfies(text) for scene in scenes))
    (root / "partial.txt").write_text(partial)
    return root


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    assert sync_playwright is not None, "pip install playwright (the test extra)"
    assert os.path.exists(CHROMIUM), f"no chromium at {CHROMIUM}: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _post(url: str, body: bytes, kind: str) -> dict:
    request = urllib.request.Request(url, body, {"Content-Type": kind}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _grid(page, within: str = "#results") -> list[int]:  # type: ignore[no-untyped-def]
    tiles = (page.locator(within) if isinstance(within, str) else within).locator("a.hit")
    return [int(tiles.nth(i).get_attribute("data-id")) for i in range(tiles.count())]


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _images_loaded(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_load_state("networkidle")


def test_searching_looking_asking_and_filtering_in_a_browser(browser, shapes_library: Path,  # type: ignore[no-untyped-def]
                                                             live_server) -> None:
    lib = Library(shapes_library / "library", device="cpu")
    server = live_server(lib, ServeSettings(warm=True))
    base = server.url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)

    # The page opens on the most recently added photos.
    page.goto(base + "/")
    expect(page.locator("a.hit")).to_have_count(40)
    assert _grid(page) == [i["id"] for i in _get(f"{base}/api/images?k=40")["images"]]
    _images_loaded(page)
    _shot(page, "01-home")
    page.click("#more")  # the next page of the browse
    expect(page.locator("a.hit")).to_have_count(48)
    assert _grid(page) == [i["id"] for i in _get(f"{base}/api/images?k=48")["images"]]
    expect(page.locator("#more")).to_be_hidden()

    # Enter searches: a match set, under a heading with its count, then the closest that did not match.
    described = (shapes_library / "partial.txt").read_text()  # what several of the scenes show
    page.fill("#q", described)
    page.press("#q", "Enter")
    heading = page.locator("#matches h2")
    expect(heading).to_contain_text(re.compile(r"^\d+ photos? match(es)? · checked (all|the) \d+"))
    found = _get(f"{base}/api/search?" + urlencode({"q": described, "all": 1}))
    assert found["matches"] >= 2 and found["others"]
    expect(heading).to_contain_text(f"{found['matches']} photo")
    expect(heading).to_contain_text(f"{found['checked']}")
    assert _grid(page, "#matches") == [h["id"] for h in found["hits"]]
    others = page.locator("section.group", has=page.locator("h2", has_text="More that might match"))
    assert _grid(page, others) == [h["id"] for h in found["others"]]
    badges = page.locator("#results a.hit .score")
    expect(badges).to_have_count(len(found["hits"]) + len(found["others"]))  # every tile ITM scored has one
    expect(page).to_have_url(f"{base}/?" + urlencode({"q": described}))
    _images_loaded(page)
    _shot(page, "02-results")

    # ArrowDown goes from the box into the results, the arrow keys move between photos, Enter opens
    # one, Escape closes it.
    page.locator("#q").focus()
    page.keyboard.press("ArrowDown")
    expect(page.locator("a.hit").first).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(page.locator("a.hit").nth(1)).to_be_focused()
    second = _grid(page)[1]
    page.keyboard.press("Enter")
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page).to_have_url(re.compile(f"[?&]image={second}$"))
    caption = _post(f"{base}/api/images/{second}/caption", b"", "application/json")["caption"]
    expect(page.locator("#caption")).to_have_text(caption)
    info = _get(f"{base}/api/images/{second}")
    expect(page.locator("#detail-name")).to_have_text(os.path.basename(info["path"]))
    expect(page.locator("#meta")).to_contain_text(info["path"])
    # A photo smaller than a preview is shown as its own file, not a re-encoding (these are 64 px PNGs).
    expect(page.locator("#detail-img")).to_have_attribute("src", info["original"])
    expect(page.locator("#question")).to_have_attribute("placeholder", "What shape is on the left?")

    page.fill("#question", "what color is the left shape?")
    page.press("#question", "Enter")
    answer = _post(f"{base}/api/images/{second}/ask", json.dumps({"question": "what color is the left shape?"}).encode(),
                   "application/json")["answer"]
    expect(page.locator("#answer")).to_have_text(answer)
    _images_loaded(page)
    _shot(page, "03-detail")

    page.check("#heat")
    expect(page.locator("#detail-img")).to_have_attribute("src", re.compile(r"^blob:"))
    expect(page.locator("#detail-img")).not_to_have_class(re.compile("busy"))
    with urllib.request.urlopen(f"{base}/api/images/{second}/explain?" + urlencode({"q": described})) as response:
        itm = float(response.headers["x-match-probability"])
    shown = "<1%" if itm < 0.005 else ">99%" if 0.995 < itm < 1 else f"{round(itm * 100)}%"
    expect(page.locator("#heat-legend")).to_be_visible()
    expect(page.locator("#heat-match")).to_have_text(f"match {shown} ·")
    expect(page.locator("#heat-legend")).to_contain_text("less")
    _shot(page, "04-detail-heat-map")

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page).not_to_have_url(re.compile("image="))  # the dialog's close event takes it out of the address
    expect(page.locator("a.hit").nth(1)).to_be_focused()
    # Back after closing leaves the search (the photo's history entry went with it): here, to the home page.
    page.go_back()
    expect(page).to_have_url(base + "/")
    expect(page.locator("#q")).to_have_value("")
    page.go_forward()
    expect(page).to_have_url(f"{base}/?" + urlencode({"q": described}))
    expect(page.locator("#matches h2")).to_be_visible()

    # "Similar photos" from the detail view.
    page.locator("a.hit").first.click()
    expect(dialog).to_be_visible()
    first = _grid(page)[0]
    page.click("#similar")
    expect(page.locator("#query-image")).to_be_visible()
    expect(page.locator("#state")).to_contain_text("look like this photo")
    assert _grid(page) == [h["id"] for h in _get(f"{base}/api/images/{first}/similar?k=40")["hits"]]
    expect(page.locator("#results a.hit .score")).to_have_count(0)  # cosine only: no match badge
    expect(page).to_have_url(re.compile(rf"/\?like={first}$"))

    # A photo dropped onto the page.
    from blipsearch.shapes.world import generate

    dropped = io.BytesIO()
    generate("test", 1, seed=99)[0].image.save(dropped, "PNG")
    transfer = page.evaluate_handle(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""", base64.b64encode(dropped.getvalue()).decode())
    page.dispatch_event("main", "dragenter", {"dataTransfer": transfer})
    expect(page.locator("#dropzone")).to_be_visible()
    page.dispatch_event("main", "drop", {"dataTransfer": transfer})
    expect(page.locator("#query-image")).to_contain_text("dropped.png")
    expect(page.locator("#state")).to_contain_text("look like this photo")
    by_upload = _post(f"{base}/api/search/image?k=40", dropped.getvalue(), "image/png")["hits"]
    assert _grid(page) == [h["id"] for h in by_upload]
    _images_loaded(page)
    _shot(page, "05-dropped-image")

    # The filters panel writes keys into the box; the address holds the box.
    trip = str(shapes_library / "photos" / "trip-b")
    page.fill("#q", QUERY)
    page.locator("#filters summary").click()
    page.fill("#folder", trip)
    page.press("#folder", "Enter")
    expect(page.locator("#q")).to_have_value(f"{QUERY} in:{trip}")
    expect(page.locator("#matches h2, .nothing").first).to_be_visible()
    box = f"{QUERY} in:{trip}"
    filtered = _get(f"{base}/api/search?" + urlencode({"q": box, "all": 1}))
    assert filtered["searched"] == 24 and all(h["path"].startswith(trip + "/") for h in filtered["hits"])
    assert _grid(page, "#matches") == [h["id"] for h in filtered["hits"]]
    expect(page).to_have_url(f"{base}/?" + urlencode({"q": box}))
    labels = [t["label"] for t in _get(f"{base}/api/tags")["tags"]]
    assert labels, "tag_library tagged some photos"
    label = next(lb for lb in labels if _get(f"{base}/api/images?" + urlencode({"tag": lb, "folder": trip}))["images"])
    page.select_option("#tag", label)
    box = f'{box} tag:"{label}"'
    expect(page.locator("#q")).to_have_value(box)
    starred = _get(f"{base}/api/search?" + urlencode({"q": box, "all": 1}))
    assert 0 < starred["searched"] < 24
    expect(page.locator("#results a.hit")).to_have_count(len(starred["hits"]) + len(starred["others"]))
    assert _grid(page) == [h["id"] for h in starred["hits"] + starred["others"]]
    _images_loaded(page)
    _shot(page, "06-filtered")

    # Rating and keyword from the photos' sidecars: the panel writes them into the box, as typed keys.
    page.select_option("#tag", "")
    page.select_option("#rating", "5")
    rated_box = f"{QUERY} in:{trip} rating:5"
    expect(page.locator("#q")).to_have_value(rated_box)
    page.fill("#keyword", "familia")
    page.press("#keyword", "Enter")
    rated_box = f"{rated_box} keyword:familia"
    expect(page.locator("#q")).to_have_value(rated_box)
    rated = _get(f"{base}/api/search?" + urlencode({"q": rated_box, "all": 1}))
    assert rated["searched"] == 8 and rated["understood"]["rating"] == 5  # scenes 0, 6, ..., 42: all of trip-b
    wanted = [h["id"] for h in rated["hits"] + rated["others"]]
    # the nearest by cosine come first, then the set in its order once ITM has checked it
    page.wait_for_function("ids => [...document.querySelectorAll('#results a.hit')].map(a => Number(a.dataset.id))"
                           ".join() === ids.join()", arg=wanted)
    expect(page.locator("#rating")).to_have_value("5")  # the panel shows what the box says
    _shot(page, "06a-rated")

    # Keys typed into the box give what the API gives for them: all:no, the best 40 reranked.
    typed = f'{QUERY} in:"{trip}" all:no'
    page.fill("#q", typed)
    page.press("#q", "Enter")
    expect(page.locator("#state")).to_contain_text("reranked by image-text matching")
    top = _get(f"{base}/api/search?" + urlencode({"q": typed, "k": 40}))
    assert top["understood"]["folders"] == [trip] and top["understood"]["all"] is False
    assert _grid(page) == [h["id"] for h in top["hits"]] == [
        h["id"] for h in _get(f"{base}/api/search?" + urlencode({"q": QUERY, "k": 40, "folder": trip}))["hits"]]
    expect(page.locator("#folder")).to_have_value(trip)  # the panel shows what the box says

    # sort:date: the matches under month headings, oldest first.
    page.fill("#q", f"{described} min:0 sort:date")  # min:0: every photo, in four months
    page.press("#q", "Enter")
    expect(page.locator("#matches h2")).to_be_visible()
    by_date = _get(f"{base}/api/search?" + urlencode({"q": described, "all": 1, "sort": "date", "min_match": 0}))
    assert by_date["matches"] >= 3
    assert _grid(page, "#results") [: by_date["matches"]] == [h["id"] for h in by_date["hits"]]
    months = sorted({h["date"][:7] for h in by_date["hits"]})
    headings = page.locator("section.group h3")
    expect(headings).to_have_count(len(months))
    assert headings.all_inner_texts() == [datetime.strptime(m, "%Y-%m").strftime("%B %Y") for m in months]
    expect(page.locator("#sort")).to_have_value("date")
    _shot(page, "06b-date-headings")

    # Nonsense matches nothing: a sentence, then the nearest photos.
    page.fill("#q", "zxqv blorp 12345")
    page.press("#q", "Enter")
    expect(page.locator(".nothing")).to_contain_text("Nothing here matches “zxqv blorp 12345”")
    nonsense = _get(f"{base}/api/search?" + urlencode({"q": "zxqv blorp 12345", "all": 1}))
    assert nonsense["matches"] == 0
    assert _grid(page) == [h["id"] for h in nonsense["others"]]
    _shot(page, "06c-nothing-matches")

    # A key it doesn't know is a sentence naming where; "?" explains the language.
    page.fill("#q", "a red circle colour:red")
    page.press("#q", "Enter")
    expect(page.locator("#notice")).to_contain_text('At character 14, "colour:red": colour is not a search key')
    page.locator("#results").click(position={"x": 1, "y": 1}, force=True)
    page.locator("body").press("?")
    expect(page.locator("#help")).to_be_visible()
    expect(page.locator("#help")).to_contain_text("camera:TEXT")
    _shot(page, "06d-help")
    page.keyboard.press("Escape")
    expect(page.locator("#help")).to_be_hidden()

    # The address opens a search directly, at phone width too.
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone.goto(f"{base}/?" + urlencode({"q": box}))
    expect(phone.locator("#matches h2, .nothing").first).to_be_visible()
    expect(phone.locator("#results a.hit")).to_have_count(len(starred["hits"]) + len(starred["others"]))
    assert _grid(phone) == [h["id"] for h in starred["hits"] + starred["others"]]
    expect(phone.locator("#folder")).to_have_value(trip)
    _images_loaded(phone)
    _shot(phone, "07-phone-results")
    phone.locator("a.hit").first.click()
    expect(phone.locator("#caption")).not_to_have_text(re.compile(r"^$|captioning"))
    _images_loaded(phone)
    _shot(phone, "08-phone-detail")
    phone.close()

    # Ids that are not in the library: a sentence, not an empty photo view or a broken image.
    page.goto(base + "/?image=99999")
    expect(page.locator("#notice")).to_have_text("No photo 99999 in this library.")
    expect(page.locator("#detail")).to_be_hidden()
    expect(page).not_to_have_url(re.compile("image="))
    page.goto(base + "/?like=99999")
    expect(page.locator("#notice")).to_have_text("No photo 99999 in this library.")
    expect(page.locator("#query-image")).to_be_hidden()

    # An address from before the box had keys: its filters become keys. No results, and the failures page.
    page.goto(base + "/?" + urlencode({"q": QUERY, "after": "2999-01-01"}))
    expect(page.locator("#notice")).to_contain_text("No photo passes these filters")
    expect(page.locator("#q")).to_have_value(f"{QUERY} after:2999-01-01")
    expect(page).to_have_url(f"{base}/?" + urlencode({"q": f"{QUERY} after:2999-01-01"}))
    page.goto(base + "/failures")
    expect(page.locator("h1")).to_have_text("Files that could not be indexed")
    _shot(page, "09-failures")
    page.close()
    refused = "console error: Failed to load resource: the server responded with a status of 400 (Bad Request)"
    missing = "console error: Failed to load resource: the server responded with a status of 404 (Not Found)"
    assert problems.count(refused) == 1  # colour:red, refused by /api/query
    assert problems.count(missing) == 2  # photo 99999's details and its likes; nothing else went wrong
    assert [p for p in problems if p not in (refused, missing)] == []


def test_the_api_docs_render_offline(browser, shapes_library: Path, live_server) -> None:  # type: ignore[no-untyped-def]
    """/docs lists the operations of the OpenAPI 3.1 document, with nothing loaded from elsewhere."""
    server = live_server(Library(shapes_library / "library", device="cpu"), ServeSettings(warm=False))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    outside: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server.url) else None)
    page.goto(server.url + "/docs")
    expect(page.locator(".opblock-summary-path[data-path='/api/search']").first).to_be_visible()
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("blipsearch")
    expect(page.get_by_text("Unable to render this definition")).to_have_count(0)
    _shot(page, "11-api-docs")
    page.close()
    assert problems == [] and outside == []


def test_an_empty_library_says_what_to_do(browser, tmp_path: Path, live_server) -> None:  # type: ignore[no-untyped-def]
    lib = Library(tmp_path / "empty", device="cpu")
    page = browser.new_page()
    page.goto(live_server(lib, ServeSettings(warm=False)).url + "/")
    expect(page.locator("#notice")).to_contain_text("This library has no photos yet")
    expect(page.locator("#notice")).to_contain_text("blipsearch index")
    _shot(page, "10-empty-library")
    page.close()
    shutil.rmtree(tmp_path / "empty")
