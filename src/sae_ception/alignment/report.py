"""What a feature-alignment run shows people: the table in the terminal, PNG plots, and a gallery of matched
feature pairs (the feature-report cards of each side, evaluation/gallery.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sae_ception.evaluation.compare import table_lines

MIN_ACTIVE = 5  # a gallery pair's features each fire on at least this many test rows (else its correlation is noise)
COLUMNS = ["kind", "R² ↑", "cosine ↑", "feat corr ↑", "corr > {t}", "Δ acc", "steps", "params"]


def _cell(value, fmt: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def table_rows(document: dict, threshold: str) -> list[tuple[str, list[str]]]:
    """(label, cells) per row of the document's table, grouped by space and direction (controls first)."""
    order = {"control": 0, "mapping": 1, "ceiling": 2}  # (sorted is stable: controls keep their own order)
    rows = sorted(document["table"], key=lambda r: (r["space"], r["direction"], order[r["kind"]]))
    cells = []
    for r in rows:
        correlated = r.get("correlated", {}).get(threshold)
        cells.append((f"{r['space']} {r['direction']} {r['predictor']}", [
            r["kind"], _cell(r["r2"]), _cell(r["cosine"]), _cell(r["feature_correlation"]),
            "n/a" if correlated is None else f"{correlated}/{r['features']}",
            _cell(r.get("accuracy_change"), "{:+.3f}"), str(r["budget"]["steps"]), str(r["budget"]["parameters"])]))
    return cells


def format_alignment_table(document: dict) -> str:
    """The run's table: the two sources, the SAEs' fit, then every predictor's measures on the test rows, then
    how many SAE features the two models share against the shuffled-row null."""
    sources, thresholds = document["sources"], sorted(document["universality"]["a_vs_b"]["matched"])
    middle = thresholds[len(thresholds) // 2] if thresholds else "0.5"
    lines = [f"feature alignment ({document['level']} rows: " + ", ".join(
        f"{n} {split}" for split, n in document["rows_per_split"].items()) + "); measured on the test rows"]
    for side in ("a", "b"):
        s = sources[side]
        acc = document["own_accuracy"].get(side)
        described = " ".join(str(part) for part in (s["kind"], s["model"], s["pretrained"], s["path"]) if part)
        lines.append(f"model {side.upper()}: {described}, layer {s['layer']}; test accuracy {_cell(acc)}")
    for name, sae in document["saes"].items():
        fit = sae.get("fit") or {}
        lines.append(f"SAE {name}: {sae['d_sae']} latents, explained variance {_cell(fit.get('explained_variance'))}, "
                     f"L0 {_cell(fit.get('l0'), '{:.1f}')}, dead {_cell(fit.get('dead_fraction'))}")
    lines.append("R²: fraction of the target's variance explained. mean: the target's training mean for every row "
                 "(non-negative activations and sparse codes have a large cosine with their mean: cosine alone is no "
                 "alignment); identity: the source rows as they are (equal widths); target's own codes: the target's "
                 "true codes (Δ acc: what its SAE alone costs); (same model): the mapping between two SAEs of the "
                 "TARGET model (another seed): the ceiling")
    headers = [c.replace("{t}", middle) for c in COLUMNS]
    lines += table_lines(headers, table_rows(document, middle), label_header="space direction predictor")
    lines.append("shared SAE features (pairs found on training rows, correlations on test rows; null: pairs found "
                 "with training rows shuffled):")
    for key, u in document["universality"].items():
        counts = ", ".join(f">{t}: {u['matched'][t]} (null {u['matched_null'][t]})" for t in thresholds)
        lines.append(f"  {key}: {u['pairs']} pairs of {u['alive_a']}/{u['alive_b']} live features; {counts}; "
                     f"SVCCA {_cell(u['svcca'])} (random {_cell(u['svcca_random'])}), CKA {_cell(u['cka'])} "
                     f"(random {_cell(u['cka_random'])})")
    for name, cc in document.get("crosscoders", {}).items():
        classes, training, test = cc.get("latent_classes", {}), cc.get("training", {}), cc.get("test", {})
        lines.append(f"crosscoder {name}: {cc.get('live_latents')} of {cc.get('d_latent')} latents live (L0 "
                     f"{_cell(training.get('l0'), '{:.1f}')}); of the live, exclusive to A {classes.get('exclusive_a')}, "
                     f"to B {classes.get('exclusive_b')}, shared {classes.get('shared')}, other {classes.get('other')}; "
                     f"test FVU from both sides A {_cell(test.get('fvu_a'))}, B {_cell(test.get('fvu_b'))} (its rows "
                     "above encode one side only, with a threshold and biases fit on both: worse); decoder cosine of "
                     f"shared latents {_cell(cc.get('shared_decoder_cosine'))} (meaningful only when both models share "
                     "a basis: a model and its fine-tune or later cycle)")
    return "\n".join(lines)


def write_plots(ctx, document: dict) -> list[Path]:
    """plots/alignment_correlations.png (each comparison's best and held-out matched correlations against their
    nulls) and plots/crosscoder_<name>.png (relative decoder norms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sae_ception.evaluation.plots import _save

    folder, paths = ctx.layout.plots(), []
    comparisons = document["universality"]
    fig, axes = plt.subplots(len(comparisons), 2, figsize=(10, 3 * len(comparisons)), squeeze=False)
    for row, (key, u) in enumerate(comparisons.items()):
        lowest = min([-0.2, *(v for values in u["histograms"].values() for v in values if v == v)])
        bins = np.linspace(np.floor(lowest * 10) / 10, 1.0, 49)  # every value inside, whatever its sign
        for col, (kind, title) in enumerate((("best", "best correlation (test rows)"),
                                             ("matched", "paired on train, measured on test"))):
            ax = axes[row, col]
            ax.hist(u["histograms"][kind], bins=bins, alpha=0.7, label="features")
            ax.hist(u["histograms"][f"{kind}_null"], bins=bins, alpha=0.7, label="shuffled-row null")
            ax.set_title(f"{key}: {title}", fontsize=9)
            ax.set_xlabel("correlation")
            ax.set_ylabel("feature pairs" if kind == "matched" else "A's features")
            ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, folder / "alignment_correlations.png"))
    plt.close(fig)
    for name, cc in document.get("crosscoders", {}).items():
        fig, ax = plt.subplots(figsize=(5, 3))
        values = [v for v in cc["relative_norms"] if v == v]
        ax.hist(values, bins=np.linspace(0, 1, 41))
        ax.set_title(f"crosscoder {name}: relative decoder norm\n0 = only A, 0.5 = shared, 1 = only B", fontsize=9)
        ax.set_xlabel("‖d_B‖ vs ‖d_A‖ (Minder et al. 2025)")
        ax.set_ylabel(f"live latents ({len(values)} of {cc.get('d_latent')})")
        fig.tight_layout()
        paths.append(_save(fig, folder / f"crosscoder_{name}.png"))
        plt.close(fig)
    if ctx.tracker is not None:
        ctx.tracker.log_alignment(document, paths)
    return paths


def write_gallery(ctx, document: dict, codes: dict, acts: dict, count: int, texts: list[str] | None = None) -> Path:
    """analysis/pairs.html: the `count` best matched A↔B feature pairs (by held-out correlation), each side's
    feature-report card (its strongest test examples, label histogram) side by side; `texts`: the test split's raw
    texts (text data), shown for each strongest example."""
    from sae_ception.evaluation.features import feature_statistics
    from sae_ception.evaluation.gallery import card_png, pair_gallery_html
    from sae_ception.utils.io import write_text

    import torch

    describe = _example_texts(ctx, document["level"], texts)
    fired = {side: (codes[side]["test"] > 0).sum(0) for side in ("a", "b")}
    pairs = [p for p in document["universality"]["a_vs_b"]["top_pairs"]  # ranked by training correlation; a pair
             if min(int(fired["a"][p[0]]), int(fired["b"][p[1]])) >= MIN_ACTIVE]  # must fire on enough test rows
    pairs = sorted(pairs, key=lambda p: -p[3])[:count]
    labels, num_classes = acts["a"]["test"].labels_N, ctx.splits.num_classes
    shown = []
    for a_feature, b_feature, correlation, train_correlation in pairs:
        cards = []
        for side, feature in (("a", a_feature), ("b", b_feature)):
            entry = feature_statistics(codes[side]["test"], labels, torch.tensor([feature]), num_classes, 8)[0]
            examples = None
            if ctx.splits.is_text:
                entry["top_texts"] = [describe(side, e["index"]) for e in entry["top_examples"]]
            elif document["level"] == "example":
                rows = [e["index"] for e in entry["top_examples"]]
                shape = ctx.splits.input_shape if len(ctx.splits.input_shape) == 2 else (1, ctx.splits.input_dim)
                examples = ctx.splits.test.x[rows].reshape(len(rows), *shape).numpy()
            cards.append((entry, card_png(entry, examples)))
        shown.append((cards[0], cards[1], correlation, train_correlation))
    path = ctx.layout.root / "analysis" / "pairs.html"
    summary = (f"The {len(shown)} A-B SAE feature pairs with the highest training correlation (pairs found one to one "
               f"on the training rows) among those whose features both fire on at least {MIN_ACTIVE} test rows; the "
               "test correlation beside it. Left: model A's feature; right: model B's; each card from the test rows.")
    write_text(path, pair_gallery_html(shown, "Matched SAE features", summary))
    return path


def _example_texts(ctx, level: str, texts: list[str] | None):
    """(side, row) -> how a test row reads: its text, or (word level) the word marked inside its text."""
    if texts is None:
        return lambda side, row: ""
    if level == "example":
        return lambda side, row: texts[row]
    import numpy as np

    folder = ctx.layout.root / "activations" / "a"
    text_index, spans = np.load(folder / "test.text_index.npy"), np.load(folder / "test.word_spans.npy")

    def word_in_text(side: str, row: int) -> str:
        text, (start, end) = texts[int(text_index[row])], spans[row]
        return f"{text[start:end]!r} in: {text[:start]}[{text[start:end]}]{text[end:]}"

    return word_in_text
