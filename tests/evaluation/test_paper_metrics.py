"""The paper's and the 2.0 code's CSI and U (evaluation/paper_metrics.py) against hand-computed cases: the worked
example of METRICS_REFERENCE.md, a dead unit, a unit firing on one class, the 75th-percentile rule with ties,
and the definitions written plainly per unit with numpy and scikit-learn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from sae_ception.evaluation import paper_metrics
from sae_ception.evaluation.monosemanticity import monosemanticity_metrics
from sae_ception.evaluation.paper_metrics import (
    VARIANTS,
    class_stats,
    paper_monosemanticity_metrics,
    paper_unit_scores,
    percentile_rank,
)
from sae_ception.evaluation.representations import in_memory, representation_metrics

LN2, LN3 = math.log(2), math.log(3)
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
# METRICS_REFERENCE.md's worked example: one column per unit
WORKED = torch.tensor([
    [3.0, 5, 0, 0, 0, 0],  # unit 0: fires on class 0 only
    [0.0, 0, 0, 0, 0, 0],  # unit 1: dead
    [2.0, 2, 2, 2, 0, 0],  # unit 2: tied at its 75th percentile
    [-1.0, -1, -3, -3, -3, -3],  # unit 3: never positive
]).T
H_ONE_THIRD = LN3 - 2 / 3 * LN2  # entropy in nats of firing on 2 of 6 examples (= of firing on 4 of 6)


def scores(acts, labels=LABELS):
    return {name: score.tolist() for name, (score, _) in paper_unit_scores(acts, labels).items()}


def test_worked_example_per_unit():
    got = scores(WORKED)
    assert got["csi_paper"] == pytest.approx([1, 0, 1 / 3, 0], abs=1e-9)
    assert got["u_paper"] == pytest.approx([LN2, 0, 0, LN2], abs=1e-9)  # nats over bits: ln 2, not 1
    assert got["u_paper_normalized"] == pytest.approx([1, 0, 0, 1], abs=1e-12)
    assert got["u_v2"] == pytest.approx([H_ONE_THIRD / math.log2(3), 0, H_ONE_THIRD / math.log2(3), 0], abs=1e-12)
    assert got["u_v2_normalized"] == pytest.approx([H_ONE_THIRD / LN3, 0, H_ONE_THIRD / LN3, 0], abs=1e-12)


def test_worked_example_means_and_live_units_as_documented():
    m = paper_monosemanticity_metrics(WORKED, LABELS)
    documented = {"csi_paper": (0.3333, 2), "u_paper": (0.3466, 2), "u_paper_normalized": (0.5, 2),
                  "u_v2": (0.2008, 2), "u_v2_normalized": (0.2897, 2)}
    for name, (mean, live) in documented.items():
        assert m[f"{name}_mean"] == pytest.approx(mean, abs=5e-5), name
        assert m[f"{name}_live_units"] == live, name
    ours = monosemanticity_metrics(WORKED, LABELS)  # the project's own definitions on the same units
    assert ours["csi_mean"] == pytest.approx(7 / 9, abs=1e-6) and ours["csi_live_units"] == 3
    assert ours["u_mean"] == pytest.approx(1.0) and ours["u_live_units"] == 2


def test_a_dead_unit_scores_0_and_pulls_every_mean_down():
    selective = torch.tensor([[3.0], [5.0], [0.0], [0.0], [0.0], [0.0]])
    alone = paper_monosemanticity_metrics(selective, LABELS)
    with_dead = paper_monosemanticity_metrics(torch.cat([selective, torch.zeros(6, 1)], 1), LABELS)
    for name in VARIANTS:
        assert with_dead[f"{name}_mean"] == pytest.approx(alone[f"{name}_mean"] / 2), name
        assert alone[f"{name}_live_units"] == with_dead[f"{name}_live_units"] == 1, name
    assert monosemanticity_metrics(torch.cat([selective, torch.zeros(6, 1)], 1), LABELS)["csi_mean"] == 1.0  # ours skips


def test_a_unit_firing_on_one_class_only():
    fires_on_class_1 = torch.tensor([[0.0], [0.0], [4.0], [1.0], [0.0], [0.0]])
    got = scores(fires_on_class_1)
    assert got["csi_paper"][0] == pytest.approx(1.0, abs=1e-9)  # class means 0, 2.5, 0
    assert got["u_paper_normalized"][0] == pytest.approx(1.0)  # fires (above 0, its percentile) on class 1 only
    assert got["u_paper"][0] == pytest.approx(LN2, abs=1e-9)
    assert got["u_v2_normalized"][0] == pytest.approx(H_ONE_THIRD / LN3)  # a binary unit explains part of H(label)


def test_the_paper_csi_rectifies_instead_of_shifting():
    # class means of max(a, 0): 2, 0.5, 0.5 -> (2 - 0.5) / (2 + 0.5) = 0.6; the negative values count as 0
    acts = torch.tensor([[2.0], [2.0], [1.0], [0.0], [-5.0], [1.0]])
    assert scores(acts)["csi_paper"][0] == pytest.approx(0.6, abs=1e-9)


@pytest.mark.parametrize("n", range(1, 14))
def test_percentile_rank_gives_numpys_75th_percentile_rule(n):
    """`a > np.percentile(a, 75)` is `a > the ⌊0.75 (n − 1)⌋-th smallest`, for any n and with ties."""
    rng = np.random.default_rng(n)
    for values in (rng.integers(0, 3, n).astype(np.float32), rng.normal(size=n).astype(np.float32)):
        ordered = np.sort(values)
        assert np.array_equal(values > np.percentile(values, 75), values > ordered[percentile_rank(n)])


def test_ties_at_the_percentile_do_not_fire():
    # sorted 0, 0, 2, 2, 2, 2: the 75th percentile is 2, so nothing is above it: the unit is dead for the
    # paper's U although it separates class 2 from the others (and the 2.0 code's U, firing at > 0, sees that)
    tied = torch.tensor([[2.0], [2.0], [2.0], [2.0], [0.0], [0.0]])
    assert float(np.percentile(tied.numpy()[:, 0], 75)) == 2.0
    (u, live), (u_v2, live_v2) = paper_unit_scores(tied, LABELS)["u_paper"], paper_unit_scores(tied, LABELS)["u_v2"]
    assert u.item() == 0.0 and not live.item()
    assert u_v2.item() > 0 and live_v2.item()
    # one example fewer at the top: sorted 0, 0, 0, 2, 2, 2 -> percentile 2 again; one more: 0, 2, 2, 2, 2, 2 too
    assert class_stats(torch.tensor([[2.0], [2], [2], [0], [0], [0]]), LABELS).above_percentile_CU.sum() == 0
    # below the tie: sorted 0, 0, 0, 0, 1, 2 -> percentile 0.75, only the 1 and the 2 fire
    assert class_stats(torch.tensor([[2.0], [1], [0], [0], [0], [0]]), LABELS).above_percentile_CU.sum() == 2


def reference(acts: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each definition written plainly for one unit at a time with numpy and scikit-learn."""
    classes = np.unique(labels)
    out = {name: np.zeros(acts.shape[1]) for name in VARIANTS}
    p_label = np.bincount(np.searchsorted(classes, labels)) / len(labels)
    h_label_bits = -(p_label * np.log2(p_label)).sum()
    for j in range(acts.shape[1]):
        a = acts[:, j]
        means = np.array([np.maximum(a[labels == c], 0).mean() for c in classes])
        top = means.argmax()
        rest = np.delete(means, top).mean()
        out["csi_paper"][j] = (means[top] - rest) / (means[top] + rest + 1e-12)
        fires = (a > np.percentile(a, 75)).astype(int)
        mi, p = mutual_info_score(fires, labels), fires.mean()
        h_bits = -(p * np.log2(p + 1e-12) + (1 - p) * np.log2(1 - p + 1e-12))
        out["u_paper"][j] = mi / (h_bits + 1e-12)
        h_nats = -sum(q * np.log(q) for q in (p, 1 - p) if q > 0)
        out["u_paper_normalized"][j] = mi / h_nats if h_nats > 0 else 0.0
        positive = (a > 0).astype(int)
        if 0 < positive.sum() < len(a):
            mi_v2 = mutual_info_score(positive, labels)
            out["u_v2"][j], out["u_v2_normalized"][j] = mi_v2 / h_label_bits, mi_v2 / (h_label_bits * math.log(2))
    return out


@pytest.mark.parametrize("kind", ["sparse codes", "signed dense", "small integers"])
def test_vectorised_variants_agree_with_the_plain_per_unit_definitions(kind):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (203,), generator=g)
    acts = {
        "sparse codes": torch.relu(torch.randn(203, 40, generator=g) - 1.0 + (labels[:, None] == torch.arange(40) % 4)),
        "signed dense": torch.randn(203, 40, generator=g) + (labels[:, None] == torch.arange(40) % 4),
        "small integers": torch.randint(-1, 3, (203, 40), generator=g).float(),  # ties everywhere
    }[kind]
    want = reference(acts.double().numpy(), labels.numpy())  # float64 class means, as the vectorised sums
    for name, values in scores(acts, labels).items():
        assert values == pytest.approx(want[name].tolist(), abs=1e-9), name


def test_chunking_does_not_change_the_numbers():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (57,), generator=g)
    acts = torch.cat([torch.relu(torch.randn(57, 9, generator=g)), torch.randn(57, 5, generator=g)], 1)
    whole, chunked = class_stats(acts, labels), class_stats(acts, labels, chunk_elements=7)
    for field in ("counts_C", "relu_sums_CU", "above_percentile_CU", "positive_CU"):
        assert torch.allclose(getattr(whole, field), getattr(chunked, field), rtol=1e-12), field


def test_the_two_u_variants_differ_from_their_twins_by_ln_2():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (300,), generator=g)
    got = scores(torch.relu(torch.randn(300, 16, generator=g)), labels)
    assert got["u_paper"] == pytest.approx([LN2 * u for u in got["u_paper_normalized"]], abs=1e-9)
    assert got["u_v2"] == pytest.approx([LN2 * u for u in got["u_v2_normalized"]], abs=1e-12)


@pytest.mark.parametrize("acts,labels", [
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),  # no examples
    (torch.rand(1, 3), torch.tensor([0])),  # one example
    (torch.rand(5, 3), torch.zeros(5, dtype=torch.long)),  # one class
])
def test_tiny_splits_give_nan_not_an_error(acts, labels):
    m = paper_monosemanticity_metrics(acts, labels)
    assert set(m) == {f"{name}_{what}" for name in VARIANTS for what in ("mean", "live_units")}
    assert all(math.isnan(v) for v in m.values()), m


def test_two_examples_of_two_classes_and_no_units():
    m = paper_monosemanticity_metrics(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]))
    assert m["csi_paper_mean"] == pytest.approx(0.5, abs=1e-9) and m["csi_paper_live_units"] == 1
    none = paper_monosemanticity_metrics(torch.zeros(4, 0), torch.tensor([0, 1, 0, 1]))
    assert math.isnan(none["u_paper_mean"]) and none["u_paper_live_units"] == 0


def test_bfloat16_codes_are_scored_like_float32():
    acts = WORKED.to(torch.bfloat16)
    assert paper_monosemanticity_metrics(acts, LABELS) == pytest.approx(paper_monosemanticity_metrics(WORKED, LABELS))


def test_the_results_families_hold_every_variant_beside_the_unchanged_keys(monkeypatch):
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(30) % 3
    test = {"dense": torch.randn(30, 6, generator=g), "sae": torch.relu(torch.randn(30, 12, generator=g))}
    families, _ = representation_metrics({name: in_memory(x, x) for name, x in test.items()}, labels, labels, seed=0)
    for name, x in test.items():
        family = families[f"monosemanticity_{name}"]
        assert {k: family[k] for k in monosemanticity_metrics(x, labels)} == monosemanticity_metrics(x, labels)
        assert {k: family[k] for k in paper_monosemanticity_metrics(x, labels)} == paper_monosemanticity_metrics(x, labels)
        assert "ari_argmax" in families[f"clustering_{name}"]
    assert paper_metrics.CHUNK_ELEMENTS >= 2**20  # digits and MNIST test splits take one chunk
