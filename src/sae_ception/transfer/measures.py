"""The measures of a transfer (on held-out test images) and the budget a method spent.

- transfer: fraction of the target class's test images the edited model predicts as the target;
- preservation: accuracy on the test images of A's own classes (argmax over every output), and its change
  from A's (preservation_change = edited - A, in accuracy points as a fraction);
- specificity: fraction of the distractor class's test images predicted as the target (lower is better);
- confusion: counts, rows = true class (every class A or B learned, and the distractor), columns = predicted
  class (the same classes, then `other` for any other output).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


MEASURES = ("transfer", "preservation", "specificity", "confusion")  # what transfer_measures returns, at least
BUDGET_ITEMS = ("target_images", "target_labels", "other_images", "validation_images", "gradient_steps",
                "parameters_changed", "parameters_added")
ADDED_LATER = ("parameters_added",)  # budget items a result of an earlier version lacks (it is recomputed)


@dataclass
class Budget:
    """What a method used to teach A the target class. "No retraining" is a claim this record checks."""

    target_images: int = 0  # distinct target-class training images it saw
    target_labels: bool = False  # whether it used their labels (choosing images by their class counts as using it)
    other_images: int = 0  # distinct images of other classes it saw (anchors, negatives, replay)
    validation_images: int = 0  # distinct labelled validation images it read (e.g. to keep its best epoch)
    gradient_steps: int = 0  # optimiser steps it took (gradient or quasi-Newton iterations)
    parameters_changed: int = 0  # scalar parameters of the edited model that differ from A's
    parameters_added: int = 0  # scalar parameters (and buffers) the edited model has beyond A's (an inserted editor)

    def as_dict(self) -> dict:
        return asdict(self)


def transfer_measures(predictions: torch.Tensor, labels: torch.Tensor, classes_a: list[int], target: int,
                      distractor: int, shown: list[int]) -> dict:
    """The measures from predicted and true labels, both int (N,).

    Returns {"transfer", "preservation", "specificity": float in [0, 1] (NaN when the split has no image of
    the classes a measure needs), "confusion": int matrix as lists, len(shown) x (len(shown) + 1),
    "confusion_rows": shown, "confusion_columns": shown + ["other"]}."""
    predictions, labels = predictions.long(), labels.long()

    def fraction(mask: torch.Tensor, hit: torch.Tensor) -> float:
        count = int(mask.sum())
        return float((hit & mask).sum()) / count if count else float("nan")

    in_a = torch.isin(labels, torch.tensor(classes_a))
    column = torch.full_like(predictions, len(shown))  # `other`
    for index, cls in enumerate(shown):
        column[predictions == cls] = index
    confusion = torch.zeros(len(shown), len(shown) + 1, dtype=torch.long)
    for index, cls in enumerate(shown):
        confusion[index] = torch.bincount(column[labels == cls], minlength=len(shown) + 1)
    return {
        "transfer": fraction(labels == target, predictions == target),
        "preservation": fraction(in_a, predictions == labels),
        "specificity": fraction(labels == distractor, predictions == target),
        "confusion": confusion.tolist(),
        "confusion_rows": list(shown),
        "confusion_columns": [*shown, "other"],
    }


def parameters_changed(model_a: torch.nn.Module, edited: torch.nn.Module) -> tuple[int, int]:
    """(changed, added): scalar parameters (and buffers) of A whose value differs in its edited copy, and those
    the edited copy has beyond A's (an inserted concept editor, its SAE included). ValueError when the copy
    lacks one of A's tensors or changed its shape."""
    state_a, state_e = model_a.state_dict(), edited.state_dict()
    if not state_a.keys() <= state_e.keys() or any(state_a[k].shape != state_e[k].shape for k in state_a):
        raise ValueError("the edited model's parameters are not A's: a transfer method must edit a copy of A")
    changed = int(sum((state_a[k].cpu() != state_e[k].cpu()).sum() for k in state_a))
    added = int(sum(state_e[k].numel() for k in state_e.keys() - state_a.keys()))
    return changed, added


def accuracy_on(predictions: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> float:
    """Accuracy over the images whose label is in `classes` (NaN when there are none)."""
    mask = torch.isin(labels.long(), torch.tensor(list(classes)))
    count = int(mask.sum())
    return float((predictions.long()[mask] == labels.long()[mask]).sum()) / count if count else float("nan")
