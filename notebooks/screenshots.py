"""Render each notebook to HTML from its saved outputs and take a full-page screenshot of it.

    python notebooks/screenshots.py                             # every notebook, into notebooks/screenshots/
    python notebooks/screenshots.py --out /tmp/shots 08_lens.ipynb
    python notebooks/screenshots.py --width 900 --tiles         # a narrow window, and one PNG per screen

Nothing is executed: the pages are `jupyter nbconvert --to html` of the committed notebooks,
opened in headless Chromium (Debian: `apt-get install chromium`; or set $CHROMIUM), so the
PNGs show what a reader of the saved outputs sees. The whole page is one PNG; `--tiles` also
cuts it into window-high pieces, readable at full size. The output folder is gitignored.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Headless on a machine with no display, no GPU and no outside network; a fresh profile each run.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]


def chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    sys.exit("screenshots.py: no Chromium found; install one (Debian: apt-get install chromium) or set $CHROMIUM")


def render_html(notebooks: list[Path], out: Path) -> list[Path]:
    """`jupyter nbconvert --to html` of each notebook, as the HTML test renders them."""
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--output-dir", str(out)]
    subprocess.run([*command, *map(str, notebooks)], check=True, capture_output=True)
    return [out / f"{notebook.stem}.html" for notebook in notebooks]


_TRAMPOLINE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
)


def _fd_above_9(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or more; the original is closed."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4): no extra package.

    The protocol is JSON messages, each ended by a NUL byte; a command's reply carries its id.
    """

    def __init__(self, executable: str, profile: str):
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4. A small Python trampoline puts
        # the pipes there and execs it: a shell's "3<&N" takes only one digit in dash, and under
        # pytest's output capture the pipes get fds above 9. Numbered 10 or more first, neither end
        # can be overwritten by the other's move to 3 or 4.
        to_browser_read, from_browser_write = _fd_above_9(to_browser_read), _fd_above_9(from_browser_write)
        command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_browser_read), str(from_browser_write), *command],
            pass_fds=(to_browser_read, from_browser_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # Chromium logs D-Bus complaints on a machine without one
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._receive())

    def _receive(self, timeout: float = 120) -> dict:
        while b"\0" not in self._buffer:
            if not select.select([self._read], [], [], timeout)[0]:
                raise RuntimeError(f"Chromium sent nothing for {timeout:.0f} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def screenshot(self, url: str, width: int, height: int) -> bytes:
        """A PNG of the whole page at ``url``, laid out in a window ``width`` x ``height`` px."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session)
        self.send(
            "Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1, mobile=False
        )
        self.events.clear()
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired")  # after its scripts (MathJax, from a CDN; offline they fail at once)
        page_height = self.send("Runtime.evaluate", session, expression="document.documentElement.scrollHeight")
        full = {"x": 0, "y": 0, "width": width, "height": page_height["result"]["value"], "scale": 1}
        shot = self.send("Page.captureScreenshot", session, format="png", clip=full, captureBeyondViewport=True)
        self.send("Target.closeTarget", targetId=target)
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except RuntimeError:
            pass
        self.process.wait(timeout=30)
        os.close(self._write)
        os.close(self._read)


def tiles(png: Path, height: int) -> list[Path]:
    """Cut a full-page PNG into window-high pieces NAME-01.png, NAME-02.png, ..."""
    from PIL import Image  # matplotlib's dependency

    page = Image.open(png)
    pieces = []
    for i, top in enumerate(range(0, page.height, height), start=1):
        piece = png.with_name(f"{png.stem}-{i:02d}.png")
        page.crop((0, top, page.width, min(top + height, page.height))).save(piece)
        pieces.append(piece)
    return pieces


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="names in notebooks/ (default: all)")
    parser.add_argument("--out", type=Path, default=HERE / "screenshots", help="folder for the PNGs (and the HTML)")
    parser.add_argument("--width", type=int, default=1280, help="window width in px (default 1280, a laptop)")
    parser.add_argument("--height", type=int, default=900, help="window height in px, one screen (default 900)")
    parser.add_argument("--tiles", action="store_true", help="also write one PNG per screen: NAME-01.png, ...")
    args = parser.parse_args(argv)

    names = args.notebooks or sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    pages = render_html([HERE / name for name in names], args.out)
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(chromium(), profile)
        try:
            for page in pages:
                png = args.out / f"{page.stem}.png"
                png.write_bytes(browser.screenshot(page.resolve().as_uri(), args.width, args.height))
                extra = f" + {len(tiles(png, args.height))} screens" if args.tiles else ""
                print(f"{png}{extra}", flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
