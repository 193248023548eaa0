"""The feature report as pictures: one card per feature, gathered in a self-contained HTML page
(`analysis/cycle_N/index.html`: PNGs inlined as data URIs, no scripts, fonts or links, so it opens offline)
and logged to wandb as one image per card.

A card's picture is one small matplotlib figure (strongest examples for image data, input-gradient map,
label histogram, logit effects); text features add their top tokens in context as highlighted HTML.

Legibility: every text in a card's picture is at least `MIN_TEXT_PX` (11) pixels tall at the picture's own size
(`FONT_PT` points at `DPI`), and the picture (at most `PANEL_PX` wide per panel, 3 panels) is never scaled down in
the page's two columns at 1280 px. The page's own text is at least 11 px (0.75rem at the browser's 16 px) and
wraps inside its card: long tokens, long runs of tokens without spaces and long contexts break across lines
(`white-space: break-spaces; overflow-wrap: anywhere`) instead of running past the card's edge. Class numbers
under the bars and labels under the example tiles are thinned (every 2nd, 3rd, ...) when there are too many
to fit side by side at that size.
"""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

DPI = 80  # quick to draw; text sizes are set in points so that they come out >= MIN_TEXT_PX at this DPI
MIN_TEXT_PX = 11  # the smallest text on a card, in pixels of the picture (and in CSS pixels on the page)
FONT_PT = 10  # every text on a card's picture (10 pt at 80 DPI = 11.1 px)
TITLE_PT = 10.5
PANEL_PX = 185  # width of one bottom panel; 3 panels = 555 px, under a card's width in a two-column page at 1280 px
BARS_WIDTH_PX = PANEL_PX - 20  # the bars' own width within their panel
GAP = 1  # pixels between example tiles
CHAR_WIDTH = 0.62  # a digit's width as a fraction of the font size (DejaVu Sans), to keep labels from colliding
LINE_PX = FONT_PT * DPI / 72 * 1.25  # one line of card text, with spacing

# vertical layout of a card, in pixels from the top (room for titles of two lines and for the labels below)
TOP_TITLE_PX, TILE_PX, TILE_LABELS_PX = 22, 64, 2 * LINE_PX + 6
BOTTOM_TITLE_PX, BARS_PX, CLASS_LABELS_PX = 2 * LINE_PX + 10, 96, LINE_PX + 6


def _px(points: float) -> float:
    return points * DPI / 72


def _step(count: int, slot_px: float, label_chars: int) -> int:
    """Label every `step`-th of `count` slots `slot_px` apart so that labels of `label_chars` characters never touch."""
    need = _text_px(label_chars) + 4
    return max(1, math.ceil(need / max(slot_px, 1e-9))) if count > 1 else 1


def _mosaic(examples_KHW: np.ndarray) -> np.ndarray:
    """The examples side by side, separated by NaN columns (drawn as background)."""
    K, H, W = examples_KHW.shape
    padded_KHW = np.pad(examples_KHW.astype(float), ((0, 0), (0, 0), (0, GAP)), constant_values=np.nan)
    return padded_KHW.transpose(1, 0, 2).reshape(H, K * (W + GAP))[:, :-GAP]


def _activation(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.4g}"


def _text_px(chars: int) -> float:
    """About how wide a label of `chars` characters is on a card."""
    return chars * CHAR_WIDTH * _px(FONT_PT)


def _tile_labels(entry: dict, count: int) -> list[tuple[str, str]]:
    return [(f"y={example['label']}", _activation(example["activation"])) for example in entry["top_examples"][:count]]


def _examples(ax, labels: list[tuple[str, str]], examples_KHW: np.ndarray, box_px: tuple[float, float]) -> None:
    K, H, W = examples_KHW.shape
    mosaic = _mosaic(examples_KHW)
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    scale = min(box_px[0] / mosaic.shape[1], box_px[1] / mosaic.shape[0])  # pixels of the card per input pixel
    step = _step(K, (W + GAP) * scale, max((max(map(len, pair)) for pair in labels), default=1))
    below = blended_transform_factory(ax.transData, ax.transAxes)
    for k in range(0, len(labels), step):
        ax.text(k * (W + GAP) + (W - 1) / 2, -0.04, "\n".join(labels[k]), transform=below,
                ha="center", va="top", fontsize=FONT_PT, linespacing=1.1)
    every = "" if step == 1 else f"; every {'2nd' if step == 2 else '3rd' if step == 3 else f'{step}th'} labelled"
    ax.set_title(f"strongest test examples (label, activation{every})", fontsize=TITLE_PT, pad=4)
    ax.axis("off")


def _gradient(ax, gradient_HW: np.ndarray) -> None:
    peak = float(np.abs(gradient_HW).max())
    bound = peak or 1.0  # symmetric limits: white is exactly 0
    ax.imshow(gradient_HW, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    ax.set_title(f"input gradient\n(\u00b1{peak:.2g}; red raises it)", fontsize=TITLE_PT, pad=4)
    ax.axis("off")


def _bars(ax, values: list[float], colors: list[str], title: str) -> None:
    """Bars over the classes, drawn without axis ticks (they cost most of a card's time): class numbers
    under the baseline (thinned when there are many), the scale in the title."""
    values = np.asarray(values, dtype=float)
    low, high = min(values.min(), 0.0), max(values.max(), 0.0)
    span = (high - low) or 1.0
    ax.bar(range(len(values)), values, color=colors, width=0.8)
    ax.axhline(0, color="#52606d", linewidth=0.6)
    step = _step(len(values), BARS_WIDTH_PX / max(len(values), 1), len(str(len(values) - 1)))
    below = blended_transform_factory(ax.transData, ax.transAxes)
    for c in range(0, len(values), step):
        ax.text(c, -0.03, str(c), transform=below, ha="center", va="top", fontsize=FONT_PT)
    ax.set_ylim(low, high + 0.05 * span)
    ax.set_xlim(-0.6, len(values) - 0.4)
    ax.set_title(title, fontsize=TITLE_PT, pad=4)
    ax.axis("off")


def card_figure(entry: dict, examples_KHW: np.ndarray | None = None) -> Figure:
    """One feature's picture: its strongest examples with label and activation (image data), its input-gradient
    map (diverging, centred at 0), its label histogram and its logit effects. Laid out in pixels so that every
    text has its room at `FONT_PT`."""
    images = examples_KHW is not None and len(examples_KHW) > 0
    gradient = entry.get("input_gradient_map")
    effects = entry.get("logit_effects")  # absent (feature-alignment cards): no panel rather than an empty one
    panels = 1 + (gradient is not None) + (effects is not None)
    width = PANEL_PX * panels
    bottom_px = BOTTOM_TITLE_PX + BARS_PX + CLASS_LABELS_PX
    top_px = TOP_TITLE_PX + TILE_PX + TILE_LABELS_PX if images else 0
    height = round(top_px + bottom_px + 4)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)

    def box(left_px: float, top: float, w: float, h: float) -> list[float]:
        return [left_px / width, 1 - (top + h) / height, w / width, h / height]

    if images:  # labels are centred under their tiles: keep half the widest one's width free at the card's edges
        labels = _tile_labels(entry, len(examples_KHW))
        margin = max(8.0, _text_px(max((max(map(len, pair)) for pair in labels), default=1)) / 2 + 4)
        examples_box = (width - 2 * margin, TILE_PX)
        _examples(fig.add_axes(box(margin, TOP_TITLE_PX, *examples_box)), labels, examples_KHW, examples_box)
    bottom = [fig.add_axes(box(column * PANEL_PX + 10, top_px + BOTTOM_TITLE_PX, BARS_WIDTH_PX, BARS_PX))
              for column in range(panels)]
    if gradient is not None:
        _gradient(bottom[0], np.asarray(gradient, dtype=float))
    histogram, mode = entry["label_histogram"], entry["label_mode"]
    colors = ["#e6780a" if c == mode else "#9aa5b1" for c in range(len(histogram))]
    _bars(bottom[-2 if effects is not None else -1], histogram, colors, f"labels where it fires\n(max {max(histogram)})")
    if effects is None:
        return fig
    _bars(bottom[-1], effects, ["#2166ac" if e >= 0 else "#b2182b" for e in effects],
          f"logit change when raised\n(\u00b1{max(map(abs, effects)):.2g})")
    return fig


def card_png(entry: dict, examples_KHW: np.ndarray | None = None) -> bytes:
    """`card_figure` as PNG bytes."""
    buffer = io.BytesIO()
    card_figure(entry, examples_KHW).savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def card_caption(entry: dict, contexts: int = 3) -> str:
    """The card's numbers as one plain-text paragraph (the wandb caption), with its first top tokens in context."""
    parts = [f"feature {entry['feature']}: fires on {100 * entry['activation_rate']:.1f}% of examples",
             f"mean activation when active {entry['mean_activation']:.3g}",
             f"label mode {'—' if entry['label_mode'] is None else entry['label_mode']}"]
    if "promotes" in entry:
        parts.append(f"promotes class {entry['promotes']}, suppresses class {entry['suppresses']}")
    for hit in entry.get("top_tokens", [])[:contexts]:
        parts.append(f"{hit['token']!r} ({hit['activation']:.2f}, label {hit['label']}) in "
                     f"\"{''.join(hit['context_tokens'])}\"")
    return "; ".join(parts)


def _token_html(text: str, activation: float, peak: float, top: bool) -> str:
    alpha = min(max(activation / peak, 0.0), 1.0) if peak > 0 else 0.0
    shown = html.escape(text.replace("\n", "\u21b5"))
    return (f'<span class="tok{" top" if top else ""}" style="background:rgba(230,120,10,{alpha:.2f})" '
            f'title="{activation:.3f}">{shown}</span>')


def _contexts_html(hits: list[dict]) -> str:
    if not hits:
        return '<p class="none">fires on no test token</p>'
    peak = hits[0]["activation"]
    rows = []
    for hit in hits:
        tokens = "".join(_token_html(text, value, peak, i == hit["token_in_context"])
                         for i, (text, value) in enumerate(zip(hit["context_tokens"], hit["context_activations"])))
        rows.append(f'<li><span class="meta">{hit["activation"]:.2f} · label {hit["label"]} · example {hit["index"]}'
                    f'</span> {tokens}</li>')
    return f'<ol class="contexts">{"".join(rows)}</ol>'


def _card_html(entry: dict, png: bytes) -> str:
    mode = "—" if entry["label_mode"] is None else entry["label_mode"]
    facts = [("fires on", f"{100 * entry['activation_rate']:.1f}% of examples"),
             ("mean when active", f"{entry['mean_activation']:.3g}"), ("label mode", mode)]
    if "promotes" in entry:
        facts += [("promotes", f"class {entry['promotes']}"), ("suppresses", f"class {entry['suppresses']}")]
    facts_html = "".join(f"<li>{html.escape(str(k))} <b>{html.escape(str(v))}</b></li>" for k, v in facts)
    feature = int(entry["feature"])
    picture = base64.b64encode(png).decode("ascii")
    parts = [f'<section class="card" id="feature-{feature}"><h2>feature {feature}</h2>',
             f'<ul class="facts">{facts_html}</ul>',
             f'<img alt="{html.escape(card_caption(entry, contexts=0))}" src="data:image/png;base64,{picture}">']
    if "top_tokens" in entry:
        parts.append(f"<h3>top tokens in context</h3>{_contexts_html(entry['top_tokens'])}")
    return "".join(parts) + "</section>"


STYLE = """
body { font-family: sans-serif; margin: 1.5rem; color: #1f2933; background: #fafafa; }
header p { margin: 0.2rem 0; color: #52606d; }
header h1 { overflow-wrap: anywhere; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 600px), 1fr)); gap: 1rem; }
.card { background: white; border: 1px solid #d9dee3; border-radius: 6px; padding: 0.8rem; min-width: 0;
  overflow-wrap: anywhere; }
.card h2 { font-size: 1.1rem; margin: 0 0 0.4rem; }
.card h3 { font-size: 0.9rem; margin: 0.6rem 0 0.2rem; }
.card img { max-width: 100%; height: auto; display: block; }
.facts { display: flex; flex-wrap: wrap; gap: 0.2rem 1.2rem; list-style: none; padding: 0; margin: 0 0 0.4rem;
  font-size: 0.85rem; color: #52606d; }
.facts b { color: #1f2933; }
.contexts { font-size: 0.85rem; line-height: 1.5; padding-left: 1.6rem; margin: 0; }
.contexts li { margin: 0.15rem 0; }
.meta { color: #52606d; font-size: 0.75rem; margin-right: 0.3rem; }
.tok { white-space: break-spaces; overflow-wrap: anywhere; border-radius: 2px; padding: 0 1px; margin-right: 2px; }
.tok.top { font-weight: bold; outline: 1.5px solid #b35806; }
.none { color: #52606d; font-size: 0.85rem; }
"""


def gallery_html(report: dict, pngs: dict[int, bytes], title: str) -> str:
    """The whole page (ASCII, non-ASCII text as character references): a header saying what was analysed,
    then one card per feature. `pngs` maps each feature to its `card_png`."""
    features = report["features"]
    summary = (f"{len(features)} most active of {report['num_latents']} SAE latents on the {report['split']} split "
               f"({report['num_examples']} examples). Logit change: each class logit's mean change when the feature "
               "is raised by its mean activation and spliced in.")
    cards = "".join(_card_html(entry, pngs[int(entry["feature"])]) for entry in features)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"
            f"</header><main>{cards}</main></body></html>\n")
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")  # any token text, whatever the file encoding


def pair_gallery_html(pairs: list, title: str, summary: str) -> str:
    """A page of matched feature pairs (scripts/align_features.py): per pair, a heading with its correlation, then
    the two features' cards side by side. `pairs`: ((entry_a, png_a), (entry_b, png_b), test correlation, training
    correlation) per pair;
    an entry may carry `top_texts` (the texts of its strongest examples), listed under its card."""
    sections = []
    for index, ((entry_a, png_a), (entry_b, png_b), correlation, train_correlation) in enumerate(pairs):
        cards = []
        for side, entry, png in (("A", entry_a, png_a), ("B", entry_b, png_b)):
            card = _card_html(entry, png).replace("<h2>feature", f"<h2>model {side}: feature", 1)
            card = card.replace(f'id="feature-{int(entry["feature"])}"', f'id="pair-{index}-{side.lower()}"', 1)
            if entry.get("top_texts"):
                items = "".join(f"<li>{html.escape(text)}</li>" for text in entry["top_texts"])
                card = card.replace("</section>", f'<h3>strongest examples</h3><ol class="contexts">{items}</ol>'
                                                  "</section>", 1)
            cards.append(card)
        sections.append(f'<section class="pair"><h2>pair {index + 1}: training correlation {train_correlation:.3f}, '
                        f'test correlation {correlation:.3f}</h2>'
                        f'<div class="pair-cards">{"".join(cards)}</div></section>')
    style = STYLE + (".pair { grid-column: 1 / -1; } .pair-cards { display: grid; grid-template-columns: "
                     "repeat(auto-fit, minmax(min(100%, 480px), 1fr)); gap: 1rem; }")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body><header><h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"
            f"</header><main>{''.join(sections)}</main></body></html>\n")
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")
