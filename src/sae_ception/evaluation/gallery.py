"""The feature report as pictures: one card per feature, gathered in a self-contained HTML page
(`analysis/cycle_N/index.html`: PNGs inlined as data URIs, no scripts, fonts or links, so it opens offline)
and logged to wandb as one image per card.

A card's picture is one small matplotlib figure (strongest examples for image data, input-gradient map,
label histogram, logit effects); text features add their top tokens in context as highlighted HTML.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from matplotlib.figure import Figure

DPI = 80  # 600 px wide cards: sharp enough, and quick to draw
GAP = 1  # pixels between example tiles


def _mosaic(examples_KHW: np.ndarray) -> np.ndarray:
    """The examples side by side, separated by NaN columns (drawn as background)."""
    K, H, W = examples_KHW.shape
    padded_KHW = np.pad(examples_KHW.astype(float), ((0, 0), (0, 0), (0, GAP)), constant_values=np.nan)
    return padded_KHW.transpose(1, 0, 2).reshape(H, K * (W + GAP))[:, :-GAP]


def _examples(ax, entry: dict, examples_KHW: np.ndarray) -> None:
    K, H, W = examples_KHW.shape
    ax.imshow(_mosaic(examples_KHW), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    below = H - 0.5 + 0.05 * H  # just under the tiles, in pixel coordinates
    for k, example in enumerate(entry["top_examples"][:K]):
        ax.text(k * (W + GAP) + (W - 1) / 2, below, f"y={example['label']}\n{example['activation']:.2f}",
                ha="center", va="top", fontsize=7)
    ax.set_title("strongest test examples (label, activation)", fontsize=9, loc="left")
    ax.axis("off")


def _gradient(ax, gradient_HW: np.ndarray) -> None:
    peak = float(np.abs(gradient_HW).max())
    bound = peak or 1.0  # symmetric limits: white is exactly 0
    ax.imshow(gradient_HW, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    ax.set_title(f"input gradient (±{peak:.2g}; red raises it)", fontsize=8)
    ax.axis("off")


def _bars(ax, values: list[float], colors: list[str], title: str) -> None:
    """Bars over the classes, drawn without axis ticks (they cost most of a card's time): class numbers
    under the baseline, the scale in the title."""
    values = np.asarray(values, dtype=float)
    low, high = min(values.min(), 0.0), max(values.max(), 0.0)
    span = (high - low) or 1.0
    ax.bar(range(len(values)), values, color=colors, width=0.8)
    ax.axhline(0, color="#52606d", linewidth=0.6)
    for c in range(len(values)):
        ax.text(c, low - 0.04 * span, str(c), ha="center", va="top", fontsize=6)
    ax.set_ylim(low - 0.2 * span, high + 0.05 * span)
    ax.set_xlim(-0.6, len(values) - 0.4)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def card_png(entry: dict, examples_KHW: np.ndarray | None = None) -> bytes:
    """One feature's picture (PNG): its strongest examples with label and activation (image data), its
    input-gradient map (diverging, centred at 0), its label histogram and its logit effects."""
    images = examples_KHW is not None and len(examples_KHW) > 0
    gradient = entry.get("input_gradient_map")
    panels = 2 + (gradient is not None)
    fig = Figure(figsize=(2.5 * panels, 3.3 if images else 1.6), dpi=DPI)
    grid = fig.add_gridspec(2 if images else 1, panels, height_ratios=[1, 1.6] if images else None, left=0.03,
                            right=0.97, bottom=0.02, top=0.92 if images else 0.86, wspace=0.25, hspace=0.5)
    if images:
        _examples(fig.add_subplot(grid[0, :]), entry, examples_KHW)
    bottom = [fig.add_subplot(grid[-1, column]) for column in range(panels)]
    if gradient is not None:
        _gradient(bottom[0], np.asarray(gradient, dtype=float))
    histogram, mode = entry["label_histogram"], entry["label_mode"]
    _bars(bottom[-2], histogram, ["#e6780a" if c == mode else "#9aa5b1" for c in range(len(histogram))],
          f"labels where it fires (max {max(histogram)})")
    effects = entry.get("logit_effects") or [0.0] * len(histogram)
    _bars(bottom[-1], effects, ["#2166ac" if e >= 0 else "#b2182b" for e in effects],
          f"logit change when raised (±{max(map(abs, effects)):.2g})")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
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
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 1rem; }
.card { background: white; border: 1px solid #d9dee3; border-radius: 6px; padding: 0.8rem; }
.card h2 { font-size: 1.1rem; margin: 0 0 0.4rem; }
.card h3 { font-size: 0.9rem; margin: 0.6rem 0 0.2rem; }
.card img { max-width: 100%; display: block; }
.facts { display: flex; flex-wrap: wrap; gap: 0.2rem 1.2rem; list-style: none; padding: 0; margin: 0 0 0.4rem;
  font-size: 0.85rem; color: #52606d; }
.facts b { color: #1f2933; }
.contexts { font-size: 0.85rem; padding-left: 1.6rem; margin: 0; }
.contexts li { margin: 0.15rem 0; }
.meta { color: #52606d; font-size: 0.75rem; margin-right: 0.3rem; }
.tok { white-space: pre; border-radius: 2px; padding: 0 1px; margin-right: 2px; }
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
