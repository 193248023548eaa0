"""The feature gallery: card pictures, the HTML page (escaped, self-contained, clean in headless Chromium) and the
cards as wandb images."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from sae_ception.config import WandbConfig
from sae_ception.evaluation import gallery
from sae_ception.evaluation.gallery import card_caption, card_png, gallery_html
from sae_ception.utils.io import write_text
from sae_ception.utils.tracking import Tracker
from sae_ception.utils.wandb_steps import LEDGER_FILE, StepLedger
from tests.browser import card_layout, is_uniform, open_offline_page

MIN_TEXT_PX = 11  # the smallest legible text on a card: in the picture's own pixels, and in CSS px on the page


def image_report() -> dict:
    """Two 8x8-image features (one with 3 strongest examples) and one that never fires."""
    rng = np.random.default_rng(0)
    fires = {"activation_rate": 0.25, "mean_activation": 1.5, "label_histogram": [1, 5, 2], "label_mode": 1,
             "top_examples": [{"index": i, "activation": 3.0 - i, "label": i} for i in range(3)],
             "logit_effects": [-0.5, 0.25, 0.0], "promotes": 1, "suppresses": 0,
             "input_gradient_map": rng.normal(size=(8, 8)).tolist()}
    silent = {"activation_rate": 0.0, "mean_activation": 0.0, "label_histogram": [0, 0, 0], "label_mode": None,
              "top_examples": [], "logit_effects": [0.0, 0.0, 0.0], "promotes": 0, "suppresses": 0,
              "input_gradient_map": np.zeros((8, 8)).tolist()}
    features = [{"feature": 7, **fires}, {"feature": 3, **silent}]
    return {"cycle": 1, "split": "test", "num_examples": 20, "num_latents": 64, "features": features}


def text_report() -> dict:
    """A text feature whose tokens hold markup, quotes and non-ASCII text, and one that fires on no token."""
    hit = {"token": "<script>", "activation": 2.0, "index": 4, "position": 1, "label": 1, "token_in_context": 1,
           "context_tokens": ["a", "<script>", ' "&snow\u2603'], "context_activations": [0.0, 2.0, 1.0]}
    second = {**hit, "token": "b", "activation": 0.5, "index": 9, "context_tokens": ["b"], "context_activations": [0.5],
              "token_in_context": 0}
    base = {"activation_rate": 0.5, "mean_activation": 1.0, "label_histogram": [2, 3], "label_mode": 1,
            "top_examples": [{"index": 4, "activation": 1.0, "label": 1}], "logit_effects": [0.1, -0.2],
            "promotes": 0, "suppresses": 1}
    features = [{"feature": 11, **base, "top_tokens": [hit, second]}, {"feature": 2, **base, "top_tokens": []}]
    return {"cycle": 0, "split": "test", "num_examples": 12, "num_latents": 32, "features": features}


def image_pngs(report: dict) -> dict[int, bytes]:
    examples = np.random.default_rng(1).random((3, 8, 8))
    return {e["feature"]: card_png(e, examples[:len(e["top_examples"])]) for e in report["features"]}


def text_pngs(report: dict) -> dict[int, bytes]:
    return {e["feature"]: card_png(e) for e in report["features"]}


def size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_card_pictures_have_a_panel_per_part():
    image_cards, text_cards = image_pngs(image_report()), text_pngs(text_report())
    assert size(image_cards[7]) == (555, 277)  # examples above gradient map, label histogram, logit effects
    assert size(image_cards[3]) == (555, 158)  # no example to show: the bottom row only
    assert size(text_cards[11]) == (370, 158)  # text: label histogram and logit effects
    assert not is_uniform(image_cards[7]) and not is_uniform(text_cards[11])


def test_the_page_has_one_card_per_feature_and_escapes_every_text():
    report = text_report()
    page = gallery_html(report, text_pngs(report), 'features <of> "cycle" 0')
    assert page.isascii() and "&#9731;" in page  # non-ASCII text as a character reference
    assert "<script" not in page and "&lt;script&gt;" in page and "&lt;of&gt; &quot;cycle&quot;" in page
    assert page.count('<section class="card"') == 2 and page.count("data:image/png;base64,") == 2
    assert 'id="feature-11"' in page and "fires on no test token" in page
    assert not re.search(r"https?:|<link|<script|@import|url\(", page), "the page must need nothing from outside"
    # background intensity follows the activation (relative to the feature's strongest), the hit token in bold
    assert page.count('class="tok top"') == 2
    tokens = re.findall(r'<span class="tok( top)?" style="background:rgba\(230,120,10,([0-9.]+)\)"', page)
    assert tokens == [("", "0.00"), (" top", "1.00"), ("", "0.50"), (" top", "0.25")]


def test_captions_name_the_numbers_and_top_tokens():
    caption = card_caption(text_report()["features"][0])
    assert caption.startswith("feature 11: fires on 50.0% of examples; mean activation when active 1;")
    assert "promotes class 0, suppresses class 1" in caption and "'<script>' (2.00, label 1)" in caption
    assert card_caption(image_report()["features"][1]).count("label mode \u2014") == 1


def test_the_detector_sees_a_broken_page(chromium, tmp_path):
    """The checks below can fail: a page with an outside image and a console error is caught."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="https://example.invalid/x.png">'
                    '<script>console.error("boom")</script></body></html>')
    problems, _, _ = open_offline_page(chromium, page)
    assert any("console: boom" in p for p in problems)
    assert any("request leaves the page: https://example.invalid/x.png" in p for p in problems)


@pytest.mark.parametrize("kind", ["image", "text"])
def test_the_page_loads_cleanly_in_headless_chromium(chromium, tmp_path, kind):
    report = image_report() if kind == "image" else text_report()
    pngs = image_pngs(report) if kind == "image" else text_pngs(report)
    path = tmp_path / "index.html"
    write_text(path, gallery_html(report, pngs, f"{kind} features"))
    problems, images, screenshot = open_offline_page(chromium, path)
    assert problems == [] and images == 2
    assert not is_uniform(screenshot)


class FakeRun:
    def __init__(self):
        self.logged: list[dict] = []

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append(metrics)


def test_the_tracker_logs_one_image_per_card_and_nothing_when_disabled(tmp_path):
    import wandb

    report = image_report()
    pngs = image_pngs(report)
    cards = {feature: (png, f"caption {feature}") for feature, png in pngs.items()}
    tracker = Tracker(WandbConfig(mode="disabled"), tmp_path, config={})
    tracker.log_feature_cards(1, cards)  # disabled: no run, nothing to do
    assert tracker.run is None and not list(tmp_path.iterdir())
    tracker.run, tracker.steps = FakeRun(), StepLedger(tmp_path / LEDGER_FILE, "fake")
    tracker.log_feature_cards(1, cards)
    (logged,) = tracker.run.logged
    assert sorted(logged) == ["analysis/cycle_1/feature_3", "analysis/cycle_1/feature_7"]
    image = logged["analysis/cycle_1/feature_7"]
    assert isinstance(image, wandb.Image) and image.image.size == (555, 277) and image._caption == "caption 7"


# --- legibility: text on the card pictures and on the page is at least MIN_TEXT_PX, and nothing leaves its card


def drawn_figures(monkeypatch) -> list:
    """Every figure card_png draws (the one it saves), recorded as it is made."""
    made = []

    class Recorded(gallery.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(gallery, "Figure", Recorded)
    return made


def drawn_texts(fig) -> list:
    """The texts a card's picture shows, with their boxes in the picture's pixels (tick labels of hidden axes are
    not drawn, so not counted)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in ax.get_children() if isinstance(t, Text)] + list(fig.texts)
    return [(t, t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]


def card_entry(classes: int, examples: int, gradient: bool, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(classes + examples)
    entry = {"feature": 5, "activation_rate": 0.25, "mean_activation": 1.5 * scale,
             "label_histogram": rng.integers(0, int(9 * scale) + 1, classes).tolist(), "label_mode": 1,
             "top_examples": [{"index": i, "activation": (3.0 - 0.1 * i) * scale, "label": i % classes}
                              for i in range(examples)],
             "logit_effects": (rng.normal(size=classes) * scale).tolist(), "promotes": 1, "suppresses": 0}
    if gradient:
        entry["input_gradient_map"] = rng.normal(size=(8, 8)).tolist()
    return entry


CARDS = {  # classes, strongest examples, their shape (None: text), activations' scale
    "digits": (10, 10, (8, 8), 1.0),
    "mnist, 28x28": (10, 10, (28, 28), 1.0),
    "few": (2, 1, (8, 8), 1.0),
    "many classes, large numbers": (20, 10, (8, 8), 1000.0),
    "a hundred classes, 30 examples": (100, 30, (28, 28), 1000.0),
    "flat inputs": (4, 10, (1, 64), 1.0),
    "never fires": (3, 0, (8, 8), 1.0),
    "text": (2, 1, None, 1.0),
    "text, many classes": (77, 10, None, 1.0),
}


@pytest.mark.parametrize("card", CARDS)
def test_every_text_on_a_card_picture_is_legible_inside_it_and_apart(monkeypatch, card):
    classes, count, shape, scale = CARDS[card]
    made = drawn_figures(monkeypatch)
    examples = np.random.default_rng(0).random((count, *shape)) if shape else None
    png = card_png(card_entry(classes, count, shape is not None, scale), examples)
    (fig,) = made
    width, height = size(png)
    texts = drawn_texts(fig)
    assert len(texts) >= 2 + min(classes, 2)
    for text, box in texts:
        pixels = text.get_fontsize() * fig.dpi / 72  # points x DPI: its height in the PNG's pixels
        assert pixels >= MIN_TEXT_PX, f"{text.get_text()!r} is {pixels:.1f} px"
        assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, \
            f"{text.get_text()!r} leaves the picture: {box.bounds}"
    for i, (first, a) in enumerate(texts):
        for second, b in texts[i + 1:]:
            assert not a.overlaps(b), f"{first.get_text()!r} and {second.get_text()!r} overlap"


def long_text_report() -> dict:
    """Text features whose contexts are hard to lay out: one very long token, 129 tokens (64 either side), a long
    word in sub-word pieces without spaces, runs of spaces and newlines, CJK text without spaces, and all at once."""
    words = "the quick brown fox jumps over the lazy dog".split()
    contexts = {
        "a 400-character token": ["before ", "x" * 400, " after"],
        "129 tokens": [f" {words[i % len(words)]}" for i in range(129)],
        "a long word in pieces": ["super", "cali", "fragi", "listic", "expi", "ali", "docious"] * 24,
        "spaces and newlines": ["    "] * 40 + ["word\n"] * 40 + ["\t"] * 20,
        "CJK": ["\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8"] * 40,
        "a path": ["/very/long/path/without/any/space/" * 12],
    }
    contexts["all at once"] = [token for tokens in contexts.values() for token in tokens]
    base = {"activation_rate": 0.5, "mean_activation": 1.0, "label_histogram": [2, 3], "label_mode": 1,
            "top_examples": [{"index": 4, "activation": 1.0, "label": 1}], "logit_effects": [0.1, -0.2],
            "promotes": 0, "suppresses": 1}
    features = []
    for number, tokens in enumerate(contexts.values()):
        top = len(tokens) // 2
        hits = [{"token": tokens[top], "activation": 2.0 - 0.1 * k, "index": 123456 + k, "position": top, "label": 1,
                 "token_in_context": top, "context_tokens": tokens,
                 "context_activations": [float(i % 3) for i in range(len(tokens))]} for k in range(3)]
        features.append({"feature": number, **base, "top_tokens": hits})
    return {"cycle": 0, "split": "test", "num_examples": 12, "num_latents": 32, "features": features}


@pytest.mark.parametrize("width", [1280, 800, 420])
def test_long_contexts_wrap_inside_their_cards_and_every_text_is_legible(chromium, tmp_path, monkeypatch, width):
    made = drawn_figures(monkeypatch)
    report, images = long_text_report(), image_report()
    pngs = {**text_pngs(report), **{100 + k: v for k, v in image_pngs(images).items()}}
    for entry in images["features"]:
        report["features"].append({**entry, "feature": 100 + entry["feature"]})
    smallest_px = min(t.get_fontsize() * f.dpi / 72 for f in made for t, _ in drawn_texts(f))
    path = tmp_path / "index.html"
    write_text(path, gallery_html(report, pngs, "long contexts " + "w" * 300))
    cards, page_scrolls = card_layout(chromium, path, width)
    assert len(cards) == len(report["features"]) and not page_scrolls
    for card in cards:
        assert card["outside"] == [] and not card["scrolls"], card["id"]
        small = [(what, px) for what, px in card["fonts"] if px < MIN_TEXT_PX]
        assert card["fonts"] and small == [], (card["id"], small)
        for natural, shown in card["images"]:
            if width >= 800:  # the picture is shown at its own size, so its text keeps its size
                assert shown == natural and smallest_px * shown / natural >= MIN_TEXT_PX, (card["id"], natural, shown)
    if width == 1280:
        assert len({round(c["width"]) for c in cards}) == 1 and cards[0]["width"] < width / 2  # two columns
