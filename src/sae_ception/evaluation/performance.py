"""Task performance of a model, on its own and with the SAE's reconstruction spliced in at the target layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from sklearn.metrics import f1_score

from sae_ception.models import Classifier
from sae_ception.utils.batching import Inputs


def f1_scores(logits_NC: torch.Tensor, labels_N: torch.Tensor) -> dict[str, float]:
    """Macro and weighted F1 (NaN with no examples)."""
    if len(labels_N) == 0:
        return {"f1_macro": float("nan"), "f1_weighted": float("nan")}
    predictions, labels = logits_NC.argmax(-1).numpy(), labels_N.numpy()
    return {
        "f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
    }


def accuracy_and_loss(logits_NC: torch.Tensor, labels_N: torch.Tensor) -> dict[str, float]:
    """Accuracy and mean cross-entropy (NaN with no examples)."""
    if len(labels_N) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    return {
        "accuracy": (logits_NC.argmax(-1) == labels_N).float().mean().item(),
        "loss": F.cross_entropy(logits_NC.float(), labels_N).item(),
    }


@torch.no_grad()
def spliced_logits(model: Classifier, sae, x: Inputs, accelerator: Accelerator, batch_size: int,
                   token_level: bool = False) -> torch.Tensor:
    """Logits when the target activation (per example, or every token's for a token-level SAE) is
    replaced by the SAE's reconstruction of it."""
    model = model.to(accelerator.device).eval()
    sae = sae.to(accelerator.device).eval()
    with model.splice_target(lambda acts: sae.decode(sae.encode(acts.float())).to(acts.dtype), token_level):
        return model.logits_of(x, batch_size, accelerator.device, accelerator.autocast)


def performance_metrics(
    logits_NC: torch.Tensor, spliced_logits_NC: torch.Tensor, labels_N: torch.Tensor
) -> dict[str, float]:
    own = accuracy_and_loss(logits_NC, labels_N)
    spliced = accuracy_and_loss(spliced_logits_NC, labels_N)
    return {
        "accuracy": own["accuracy"],
        "loss": own["loss"],
        **f1_scores(logits_NC, labels_N),
        "spliced_accuracy": spliced["accuracy"],
        "spliced_loss": spliced["loss"],
        "spliced_accuracy_drop": own["accuracy"] - spliced["accuracy"],
    }
