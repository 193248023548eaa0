"""Choosing between candidate edits of A on validation images only (never on the test images that are reported)."""

from __future__ import annotations

from sae_ception.errors import ConfigError
from sae_ception.transfer.measures import transfer_measures


def require_validation_images(data, setting: str) -> None:
    """Preflight of a method that chooses on validation images: the validation split must hold images of A's
    classes and of the target (one ConfigError line naming `setting` otherwise)."""
    concept = data.concept
    missing = [c for c in [*concept.classes_a, concept.target] if data.count("val", c) == 0]
    if missing:
        raise ConfigError(f"{setting}: choosing among several values needs validation images of A's classes and "
                          f"the target, but class {', '.join(map(str, missing))} has none in the validation split; "
                          "raise dataset.val_fraction (e.g. 0.1) or give one value")


def select_on_validation(ctx, candidates: list) -> int:
    """The index of the candidate edit of A (models) with the best mean of transfer and preservation on the
    validation images of A's classes and the target, read through ctx.validation_split (so counted in the
    budget); the first candidate on a tie. Each candidate's score is reported as diagnostics
    `validation_score_<i>`."""
    concept = ctx.concept
    val = ctx.validation_split([*concept.classes_a, concept.target])
    scores = []
    for index, model in enumerate(candidates):
        predicted = model.logits_of(val.x, 1024, ctx.device).argmax(1)
        m = transfer_measures(predicted, val.y, list(concept.classes_a), concept.target, concept.distractor,
                              concept.shown_classes)
        scores.append((m["transfer"] + m["preservation"]) / 2)
        ctx.report(f"validation_score_{index}", scores[-1])
    if not scores or any(score != score for score in scores):
        raise ConfigError("no validation images of A's classes and the target to choose with")
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
