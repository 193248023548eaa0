"""The concept-transfer table for people: one row per method, its measures and its budget."""

from __future__ import annotations

import math

from sae_ception.evaluation.compare import table_lines


def _fraction(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _signed(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.3f}"


COLUMNS = ["method", "transfer ↑", "preservation ↑", "Δ vs A", "specificity ↓", "target imgs", "labels",
           "other imgs", "val imgs", "steps", "params changed", "params added"]


def transfer_rows(summary: dict) -> list[list[str]]:
    """One row of cells per method, in the run's order (the cells of `COLUMNS`)."""
    rows = []
    for name, result in summary["methods"].items():
        m, b = result["measures"], result["budget"]
        rows.append([name, _fraction(m["transfer"]), _fraction(m["preservation"]), _signed(m["preservation_change"]),
                     _fraction(m["specificity"]), str(b["target_images"]), "yes" if b["target_labels"] else "no",
                     str(b["other_images"]), str(b.get("validation_images", 0)), str(b["gradient_steps"]),
                     str(b["parameters_changed"]), str(b.get("parameters_added", 0))])
    return rows


def format_transfer_table(summary: dict) -> str:
    """The run's table: a line on A and B, then method x (transfer / preservation / specificity / budget)."""
    concept, models = summary["concept"], summary["models"]
    a, b = models["a"], models["b"]
    lines = [
        f"concept transfer of class {concept['target']} (distractor {concept['distractor']}) into model A; "
        "measured on the test split",
        f"model A (classes {', '.join(map(str, concept['classes_a']))}): accuracy on its classes "
        f"{_fraction(a['own_accuracy'])}; model B (classes {', '.join(map(str, concept['classes_b']))}): accuracy on "
        f"its classes {_fraction(b['own_accuracy'])}, class {concept['target']} recall {_fraction(b['transfer'])}",
        "transfer: target images called target; preservation: accuracy on A's classes; specificity: distractor "
        "images called target; budget: distinct training images (target / other) and labelled validation images "
        "each method used, whether it used target labels, its optimiser steps (SAEs' and aligners' included), A's "
        "parameters it changed and those it added (an inserted concept editor, its SAE included)",
    ]
    lines += [f"warning: {warning}" for warning in summary.get("warnings", [])]
    cells = [(row[0], row[1:]) for row in transfer_rows(summary)]
    return "\n".join([*lines, *table_lines(COLUMNS[1:], cells, label_header=COLUMNS[0])])
