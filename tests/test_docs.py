"""The documentation site builds with warnings as errors, and a real browser shows its pages.

The site is built once, as `python -m sphinx -W --keep-going -n -b html -c docs . OUT` does it
(nitpicky: every cross-reference must resolve), into a temporary folder, and served over HTTP on
127.0.0.1. Headless Chromium, driven over its DevTools pipe by notebooks/screenshots.py's
`Browser`, then opens the home page, a backend page, a page with a results plot and a notebook
page, and each must load without a console error, show its title, and decode every image on it.

Outside CI the test skips where Sphinx or Chromium is missing (Debian: `apt-get install
chromium`); under CI=true it fails instead, since `.ci/run` installs both.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# (page, the title it must show, at least this many images): a page that should show a plot is
# checked to have one, so a missing figure fails rather than passing as "no images, none broken".
PAGES = [
    ("docs/index.html", "steering_backends", 0),
    ("docs/backends/pytorch_hooks.html", "PyTorch hooks", 0),
    ("docs/behaviour.html", "Behaviour on a real model", 1),
    ("notebooks/08_lens.html", "lens", 4),
]


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI=true: .ci/run installs it, so the test fails instead of skipping)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The site, built once with warnings as errors; the path of its HTML folder."""
    absent = [name for name in ("sphinx", "furo", "myst_nb") if importlib.util.find_spec(name) is None]
    if absent:
        _missing(f"the documentation packages {absent} are not installed; pip install -r requirements.txt")
    out = tmp_path_factory.mktemp("docs") / "html"
    flags = ["-W", "--keep-going", "-n", "-q"]  # warnings are errors, every reference checked, quiet
    command = [sys.executable, "-m", "sphinx", *flags, "-b", "html", "-c", "docs", ".", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the site did not build cleanly:\n{done.stderr[-6000:]}"
    return out


@pytest.fixture(scope="session")
def server(site: Path):
    """An HTTP server on 127.0.0.1 serving the built site; its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # The browser hung up before a reply was written (a favicon it asked for as the page closed).
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="session")
def browser():
    from notebooks.screenshots import Browser, chromium

    try:
        executable = chromium()
    except SystemExit as err:  # screenshots.py exits with the reason when it finds none
        _missing(str(err))
    with tempfile.TemporaryDirectory() as profile:
        chrome = Browser(executable, profile)
        try:
            yield chrome
        finally:
            chrome.close()


def test_the_site_builds_with_warnings_as_errors(site: Path):
    for page, _, _ in PAGES:
        assert (site / page).is_file(), f"{page} was not built"
    assert (site / "index.html").is_file(), "the root index.html that forwards to docs/index.html"


def open_page(browser, url: str) -> tuple[list[str], dict]:
    """Load ``url`` in a new tab; its console errors and what the page shows, read after the load."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        browser.send(f"{domain}.enable", session)
    browser.events.clear()
    browser.send("Page.navigate", session, url=url)
    browser.wait_for("Page.loadEventFired")
    shown = browser.send(
        "Runtime.evaluate",
        session,
        awaitPromise=True,
        returnByValue=True,
        # Every <img>: wait for it to finish loading (decode() rejects on a broken image), then read its size.
        expression="""(async () => {
            const images = Array.from(document.images);
            await Promise.all(images.map(i => i.decode().catch(() => null)));
            return {
                title: document.title,
                h1: Array.from(document.querySelectorAll("h1")).map(h => h.innerText),
                images: images.map(i => ({src: i.src.slice(0, 120), width: i.naturalWidth})),
            };
        })()""",
    )["result"]["value"]
    # Anything the page logged at error level: an uncaught exception, console.error, a failed request.
    errors = []
    for event in browser.events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(f"{details.get('text')} {details.get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
    browser.send("Target.closeTarget", targetId=target)
    return errors, shown


@pytest.mark.parametrize(("page", "title", "min_images"), PAGES, ids=[p for p, _, _ in PAGES])
def test_a_browser_shows_the_page(browser, server: str, page: str, title: str, min_images: int):
    errors, shown = open_page(browser, server + page)
    assert not errors, f"{page}: console errors {errors}"
    assert title.lower() in shown["title"].lower(), f"{page}: title {shown['title']!r}"
    assert any(title.lower() in h.lower() for h in shown["h1"]), f"{page}: headings {shown['h1']}"
    broken = [image["src"] for image in shown["images"] if image["width"] == 0]
    assert not broken, f"{page}: images that did not decode: {broken}"
    assert len(shown["images"]) >= min_images, f"{page}: {len(shown['images'])} images, expected {min_images}+"


def test_the_browser_check_catches_a_broken_image_and_a_script_error(browser, server: str, site: Path):
    """The checks above can fail: a page with a missing image and a throwing script is caught."""
    (site / "broken.html").write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body><h1>broken</h1>"
        '<img src="missing.png"><script>undefined_function()</script></body></html>'
    )
    errors, shown = open_page(browser, server + "broken.html")
    assert any("undefined_function" in e for e in errors), errors
    assert any("missing.png" in e for e in errors), errors
    assert [image["width"] for image in shown["images"]] == [0]
