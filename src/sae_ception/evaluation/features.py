"""Per-feature analysis of an SAE: how often and how strongly each latent fires, on which labels, its
strongest examples, and its causal effect on the classifier's logits.

Everything is computed for all requested features at once from the codes of an evaluation split: in memory
(`most_active_features`, `feature_statistics`), or streamed from a code store of any size
(`most_active_from_stats`, `streamed_feature_statistics`: the same numbers).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from sae_ception.evaluation.rows import CHUNK_ROWS, RowSource
from sae_ception.evaluation.unit_stats import UnitStats
from sae_ception.models import Classifier
from sae_ception.utils.batching import Inputs


def most_active_features(codes_NF: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` latents that fire on the most examples (ties: larger total activation)."""
    firing_F = (codes_NF != 0).sum(0).double()
    score_F = firing_F + codes_NF.sum(0).double() / (codes_NF.sum().double() + 1)  # total only breaks ties
    return score_F.topk(min(count, codes_NF.shape[1])).indices


def strongest(values_NS: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each column and their rows ([K, S] each, K = min(k, N)); tied values go to the lower
    row, so the choice never depends on how the rows were chunked."""
    order_KS = values_NS.sort(dim=0, descending=True, stable=True).indices[:k]
    return values_NS.gather(0, order_KS), order_KS


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
    top_values_KS, top_rows_KS = strongest(codes_NS, top_k)
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


def most_active_from_stats(stats: UnitStats, count: int) -> torch.Tensor:
    """`most_active_features` from streamed sums (`unit_stats` of the codes)."""
    firing_F, sums_F = stats.nonzero_CU.sum(0), stats.sums_CU.sum(0)
    score_F = firing_F + sums_F / (sums_F.sum() + 1)
    return score_F.topk(min(count, len(score_F))).indices


def streamed_feature_statistics(codes: RowSource, labels_N: torch.Tensor, stats: UnitStats, features: torch.Tensor,
                                num_classes: int, top_k: int = 10, chunk_rows: int = CHUNK_ROWS) -> list[dict]:
    """`feature_statistics` over codes of any size: rates, means and label histograms from `stats`
    (`unit_stats(codes, labels_N)`), the strongest examples by a running top-k over chunks of rows (only the
    chunk's columns of `features` are ever dense)."""
    n, columns = codes.shape[0], features.numpy()
    values_KS = torch.zeros(0, len(columns))
    rows_KS = torch.zeros(0, len(columns), dtype=torch.long)
    for start, block in codes.chunks(chunk_rows):
        part = block[:, columns]
        part_BS = torch.from_numpy(part.toarray() if sparse.issparse(part) else np.ascontiguousarray(part)).float()
        values = torch.cat([values_KS, part_BS])  # earlier rows first: `strongest` keeps the lower of tied rows
        rows = torch.cat([rows_KS, torch.arange(start, start + len(part_BS))[:, None].expand_as(part_BS)])
        values_KS, order_KS = strongest(values, top_k)
        rows_KS = rows.gather(0, order_KS)
    present = {int(label): index for index, label in enumerate(stats.classes.tolist())}
    report = []
    for column, feature in enumerate(features.tolist()):
        fired = int(stats.nonzero_CU[:, feature].sum())
        histogram = [int(stats.nonzero_CU[present[c], feature]) if c in present else 0 for c in range(num_classes)]
        keep = values_KS[:, column] != 0
        report.append({
            "feature": feature,
            "activation_rate": fired / max(n, 1),
            "mean_activation": float(stats.sums_CU[:, feature].sum() / fired) if fired else 0.0,
            "label_histogram": histogram,
            "label_mode": int(torch.tensor(histogram).argmax()) if fired else None,
            "top_examples": [{"index": int(row), "activation": float(value), "label": int(labels_N[row])}
                             for row, value in zip(rows_KS[keep, column].tolist(), values_KS[keep, column].tolist())],
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
