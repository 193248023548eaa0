"""Per-feature analysis of an SAE: how often and how strongly each latent fires, on which labels, its
strongest examples, and its causal effect on the classifier's logits.

Everything is computed for all requested features at once from the codes of an evaluation split.
"""

from __future__ import annotations

import torch

from sae_ception.models import Classifier
from sae_ception.utils.batching import Inputs


def most_active_features(codes_NF: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` latents that fire on the most examples (ties: larger total activation)."""
    firing_F = (codes_NF != 0).sum(0).double()
    score_F = firing_F + codes_NF.sum(0).double() / (codes_NF.sum().double() + 1)  # total only breaks ties
    return score_F.topk(min(count, codes_NF.shape[1])).indices


def feature_statistics(codes_NF: torch.Tensor, labels_N: torch.Tensor, features: torch.Tensor, num_classes: int,
                       top_k: int = 10) -> list[dict]:
    """For each feature: activation rate, mean activation when active, label histogram when active and
    its mode (None if it never fires), and its `top_k` strongest examples (index, activation, label)."""
    codes_NS = codes_NF[:, features].float()
    active_NS = codes_NS != 0
    counts_S = active_NS.sum(0)
    sums_S = codes_NS.sum(0)
    one_hot_NC = torch.nn.functional.one_hot(labels_N.long(), num_classes).float()
    histograms_SC = active_NS.float().T @ one_hot_NC
    top_values_KS, top_rows_KS = codes_NS.topk(min(top_k, len(codes_NS)), dim=0)
    report = []
    for column, feature in enumerate(features.tolist()):
        fired = int(counts_S[column])
        histogram = histograms_SC[column].long().tolist()
        keep = top_values_KS[:, column] != 0
        rows = top_rows_KS[keep, column].tolist()
        report.append({
            "feature": feature,
            "activation_rate": fired / max(len(codes_NS), 1),
            "mean_activation": float(sums_S[column] / fired) if fired else 0.0,
            "label_histogram": histogram,
            "label_mode": int(torch.tensor(histogram).argmax()) if fired else None,
            "top_examples": [{"index": row, "activation": float(codes_NS[row, column]), "label": int(labels_N[row])}
                             for row in rows],
        })
    return report


@torch.no_grad()
def logit_effects(model: Classifier, sae, inputs: Inputs, features: torch.Tensor, amounts: torch.Tensor,
                  batch_size: int = 512, device: str | torch.device = "cpu") -> torch.Tensor:
    """(S, C): mean change of each class logit when feature s is raised by `amounts[s]` in latent space,
    decoded and spliced in at the target layer, against splicing in the unchanged reconstruction."""
    model = model.to(device).eval()
    sae = sae.to(device).eval()
    decoder_SD = sae.W_dec_FD[features.to(device)]

    def spliced(shift_D: torch.Tensor | None) -> torch.Tensor:
        def replace(acts: torch.Tensor) -> torch.Tensor:
            codes = sae.encode(acts.float())
            recon_norm = sae.decode_normalized(codes) + (0 if shift_D is None else shift_D)
            return sae.denormalize(recon_norm).to(acts.dtype)

        with model.splice_target(replace):
            return model.logits_of(inputs, batch_size, device).mean(0)

    base_C = spliced(None)
    return torch.stack([spliced(amount * row) - base_C for row, amount in zip(decoder_SD, amounts.tolist())]).cpu()


def input_gradient_maps(model: Classifier, sae, x_ND: torch.Tensor, features: torch.Tensor,
                        rows_per_feature: list[list[int]], device: str | torch.device = "cpu") -> torch.Tensor:
    """(S, input features): for each feature, the gradient of its activation with respect to the input,
    averaged over the given rows (its strongest examples): which input pattern drives it. Feature-vector
    inputs only (images); all zeros for a feature with no rows."""
    model = model.to(device).eval()
    sae = sae.to(device).eval()
    maps = torch.zeros(len(features), x_ND.shape[1])
    for column, (feature, rows) in enumerate(zip(features.tolist(), rows_per_feature)):
        if not rows:
            continue
        x = x_ND[rows].to(device).float().requires_grad_(True)
        with torch.enable_grad(), model.capture_target() as captured:
            model(x)
            activation = sae.encode(captured.acts.float())[:, feature]
            (grad,) = torch.autograd.grad(activation.sum(), x)
        maps[column] = grad.mean(0).cpu()
    return maps
