"""The feature gallery: card pictures, the HTML page (escaped, self-contained, clean in headless Chromium) and the
cards as wandb images."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from sae_ception.config import WandbConfig
from sae_ception.evaluation.gallery import card_caption, card_png, gallery_html
from sae_ception.utils.io import write_text
from sae_ception.utils.tracking import Tracker
from tests.browser import is_uniform, open_offline_page


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
    assert size(image_cards[7]) == (600, 264)  # examples above gradient map, label histogram, logit effects
    assert size(image_cards[3]) == (600, 128)  # no example to show: the bottom row only
    assert size(text_cards[11]) == (400, 128)  # text: label histogram and logit effects
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

    def log(self, metrics: dict) -> None:
        self.logged.append(metrics)


def test_the_tracker_logs_one_image_per_card_and_nothing_when_disabled(tmp_path):
    import wandb

    report = image_report()
    pngs = image_pngs(report)
    cards = {feature: (png, f"caption {feature}") for feature, png in pngs.items()}
    tracker = Tracker(WandbConfig(mode="disabled"), tmp_path, config={})
    tracker.log_feature_cards(1, cards)  # disabled: no run, nothing to do
    assert tracker.run is None and not list(tmp_path.iterdir())
    tracker.run = FakeRun()
    tracker.log_feature_cards(1, cards)
    (logged,) = tracker.run.logged
    assert sorted(logged) == ["analysis/cycle_1/feature_3", "analysis/cycle_1/feature_7"]
    image = logged["analysis/cycle_1/feature_7"]
    assert isinstance(image, wandb.Image) and image.image.size == (600, 264) and image._caption == "caption 7"
