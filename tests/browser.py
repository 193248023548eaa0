"""Open a local HTML page in headless Chromium (the `chromium` fixture) and collect what went wrong."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def open_offline_page(browser, path: Path) -> tuple[list[str], int, bytes]:
    """Load `path`; return its problems (console errors, page errors, failed requests, any request for something
    other than the page itself or a data: URI, images that did not decode), its image count and a screenshot."""
    url = Path(path).resolve().as_uri()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []

    def on_console(message) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    def on_request(request) -> None:
        if request.url != url and not request.url.startswith("data:"):
            problems.append(f"request leaves the page: {request.url}")

    page.on("console", on_console)
    page.on("request", on_request)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed request: {request.url}"))
    try:
        page.goto(url, wait_until="load")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        problems += [f"{broken} images did not decode"] if broken else []
        count = page.evaluate("document.images.length")
        screenshot = page.screenshot()
    finally:
        context.close()
    return problems, count, screenshot


def is_uniform(png: bytes) -> bool:
    """Whether a PNG is one flat colour (a blank render)."""
    extrema = Image.open(io.BytesIO(png)).convert("RGB").getextrema()
    return all(low == high for low, high in extrema)
