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


CARD_LAYOUT_JS = """
() => Array.from(document.querySelectorAll('.card')).map(card => {
  const box = card.getBoundingClientRect();
  const style = getComputedStyle(card);
  const left = box.left + parseFloat(style.borderLeftWidth) + parseFloat(style.paddingLeft);
  const right = box.right - parseFloat(style.borderRightWidth) - parseFloat(style.paddingRight);
  const describe = el => `${el.tagName.toLowerCase()}.${el.className} "${(el.textContent || el.alt || '').slice(0, 40)}"`;
  const outside = [];
  for (const el of card.querySelectorAll('*')) {
    for (const r of el.getClientRects()) {  // every line box of an inline element, not only their union
      if (r.width > 0 && (r.right > right + 0.5 || r.left < left - 0.5)) {
        outside.push(`${describe(el)} spans ${r.left.toFixed(1)}..${r.right.toFixed(1)}, card content ${left.toFixed(1)}..${right.toFixed(1)}`);
        break;
      }
    }
  }
  const fonts = [];
  for (const el of [card, ...card.querySelectorAll('*')]) {
    const own = Array.from(el.childNodes).some(n => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
    if (own) fonts.push([describe(el), parseFloat(getComputedStyle(el).fontSize)]);
  }
  const images = Array.from(card.querySelectorAll('img')).map(i => [i.naturalWidth, i.getBoundingClientRect().width]);
  return {id: card.id, outside, fonts, images, scrolls: card.scrollWidth > card.clientWidth + 0.5,
          width: box.width};
})
"""


def card_layout(browser, path: Path, width: int = 1280) -> tuple[list[dict], bool]:
    """Load `path` at a viewport `width` CSS px wide; per card: which elements reach outside its content box,
    the font size (CSS px) of every element that holds text itself, each image's natural and shown width, and
    whether the card scrolls sideways; and whether the page itself scrolls sideways."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    try:
        page.goto(Path(path).resolve().as_uri(), wait_until="load")
        cards = page.evaluate(CARD_LAYOUT_JS)
        page_scrolls = page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth")
    finally:
        context.close()
    return cards, page_scrolls
