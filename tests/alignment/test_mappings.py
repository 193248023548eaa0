"""Each alignment mapping (src/sae_ception/alignment/mapping.py, mappings/) and the evaluation measures
(alignment/evaluate.py) against a hand-computed case or an independent library: numpy for the chunked moments,
scipy's orthogonal_procrustes, scikit-learn's Ridge, hand-computed loss terms and accuracies."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.linear_model import Ridge

from sae_ception.alignment import mapping
from sae_ception.alignment.crosscoder import latent_classes, relative_decoder_norm
from sae_ception.alignment.evaluate import prediction_measures, spliced_accuracy
from sae_ception.alignment.mapping import chunks, column_means, moments
from sae_ception.alignment.mappings.affine import Affine, AffineConfig
from sae_ception.alignment.mappings.crosscoder import CrosscoderConfig, CrosscoderMapping
from sae_ception.alignment.mappings.mlp import MLPMapping, MLPMappingConfig, loss_terms
from sae_ception.alignment.mappings.procrustes import Procrustes, ProcrustesConfig
from sae_ception.alignment.measures import explained_variance
from sae_ception.errors import DivergenceError
from sae_ception.models import build_model, capture_output
from sae_ception.models.mlp import MLPConfig
from tests.alignment.test_crosscoder import planted


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: on a shared 2-core machine, torch's thread handoff costs more than the maths
    (measured: a 240-step crosscoder fit took 32 s with 2 threads under load, 1.7 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_chunks(monkeypatch):
    """Every chunked reader works 7 rows at a time (`chunks` and the crosscoder read mapping.CHUNK when called)."""
    monkeypatch.setattr(mapping, "CHUNK", 7)
    assert [len(c) for c in chunks(torch.zeros(16, 2))] == [7, 7, 2]


def fit(mapper, x, y, x_val=None, y_val=None, space="activations", seed=0):
    x_val = x[:0] if x_val is None else x_val
    y_val = y[:0] if y_val is None else y_val
    return mapper.fit(x, y, x_val, y_val, seed=seed, space=space)


def sparse_codes(n, f, gen, p=0.2):
    """Non-negative sparse codes: each entry active with probability p, magnitude U(0.5, 1.5)."""
    return (torch.rand(n, f, generator=gen) < p).float() * (torch.rand(n, f, generator=gen) + 0.5)


# --- moments ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [1, 7, 50, 8192])
def test_moments_and_column_means_equal_numpy(monkeypatch, rows):
    monkeypatch.setattr(mapping, "CHUNK", rows)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 4, generator=gen) * 3 + 7, torch.randn(50, 3, generator=gen) - 2
    xd, yd = x.double().numpy(), y.double().numpy()
    xc, yc = xd - xd.mean(0), yd - yd.mean(0)
    np.testing.assert_allclose(column_means(x).numpy(), xd.mean(0), rtol=1e-12)
    m = moments(x, y, with_xtx=True)
    assert m.n == 50
    np.testing.assert_allclose(m.mean_x.numpy(), xd.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.mean_y.numpy(), yd.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.xty.numpy(), xc.T @ yc, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.xtx.numpy(), xc.T @ xc, rtol=1e-10, atol=1e-10)
    assert m.ss_x == pytest.approx((xc ** 2).sum(), rel=1e-12)
    assert m.ss_y == pytest.approx((yc ** 2).sum(), rel=1e-12)
    assert moments(x, y).xtx is None


def test_moments_refuse_unpaired_or_empty_rows():
    with pytest.raises(ValueError, match="same examples"):
        moments(torch.zeros(5, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        moments(torch.zeros(0, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="no rows"):
        column_means(torch.zeros(0, 3))


# --- Procrustes ---------------------------------------------------------------------------------------------

def scaled(x):
    """Rows centred and divided by their RMS norm (float64 numpy): Procrustes's X̃."""
    x = x.double().numpy()
    x = x - x.mean(0)
    return x / np.sqrt((x ** 2).sum() / len(x))


def test_procrustes_equals_scipy_orthogonal_procrustes(small_chunks):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=gen) * 2 + 1
    y = x @ torch.randn(5, 5, generator=gen) + 0.5 * torch.randn(60, 5, generator=gen) - 3
    mapper = Procrustes("procrustes", ProcrustesConfig())
    assert fit(mapper, x, y) == {"parameters": 25, "steps": 0, "rows": 60}
    want, _ = scipy.linalg.orthogonal_procrustes(scaled(x), scaled(y))
    np.testing.assert_allclose(mapper.rotation.numpy(), want, atol=1e-10)
    y_np = y.double().numpy()
    rms_y = np.sqrt(((y_np - y_np.mean(0)) ** 2).sum() / len(y_np))
    np.testing.assert_allclose(mapper.predict(x).numpy(), scaled(x) @ want * rms_y + y_np.mean(0), atol=1e-5)


def test_procrustes_recovers_a_planted_rotation():
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    x = torch.randn(500, 6, generator=gen) * 2 + 1
    y = (3 * (x.double() @ q) + 5).float()  # rotation, scale 3, shift 5
    mapper = Procrustes("procrustes", ProcrustesConfig())
    fit(mapper, x, y)
    torch.testing.assert_close(mapper.rotation, q, atol=1e-6, rtol=0)
    x_new = torch.randn(100, 6, generator=gen)  # held-out rows are mapped exactly too
    pred, want = mapper.predict(x_new), 3 * (x_new.double() @ q) + 5
    assert (pred - want).abs().max() < 1e-5  # measured 4.8e-7 (rotation error 1.7e-9)
    assert explained_variance(pred, want) > 0.9999


@pytest.mark.parametrize("p,q", [(4, 7), (7, 4)])
def test_procrustes_across_widths_is_zero_padded_and_semi_orthogonal(p, q):
    """P != Q: R (P x Q) is the P x Q block of the square solution with the narrower side zero-padded, so it has
    orthonormal rows (P < Q) or columns (P > Q)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(80, p, generator=gen)
    y = x @ torch.randn(p, q, generator=gen) + 0.3 * torch.randn(80, q, generator=gen)
    mapper = Procrustes("procrustes", ProcrustesConfig())
    fit(mapper, x, y)
    r = mapper.rotation.numpy()
    assert r.shape == (p, q)
    small = min(p, q)
    gram = r @ r.T if p < q else r.T @ r
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-10)
    width = max(p, q)
    padded_x, padded_y = np.zeros((80, width)), np.zeros((80, width))
    padded_x[:, :p], padded_y[:, :q] = scaled(x), scaled(y)
    square, _ = scipy.linalg.orthogonal_procrustes(padded_x, padded_y)
    np.testing.assert_allclose(r, square[:p, :q], atol=1e-10)
    assert mapper.predict(x).shape == (80, q)


def test_procrustes_on_permuted_codes_puts_every_feature_back_in_the_targets_order(small_chunks):
    """Regression: with every feature alive and all of them paired, the prediction came back in the source's
    column order instead of the target's."""
    gen = torch.Generator().manual_seed(3)
    x = sparse_codes(300, 10, gen)
    perm = torch.randperm(10, generator=gen)
    y = x[:, perm]
    mapper = Procrustes("procrustes", ProcrustesConfig())
    assert fit(mapper, x, y, space="codes")["paired_features"] == 10
    x_test = sparse_codes(100, 10, gen)
    torch.testing.assert_close(mapper.predict(x_test), x_test[:, perm], atol=1e-5, rtol=0)


def test_procrustes_codes_predict_unpaired_target_features_by_their_training_mean(small_chunks):
    """Target columns: 6 copies of the source's features (permuted), 2 features of their own (alive, but the source
    has only 6 features to pair) and 2 dead ones; the last four are predicted by their training means."""
    gen = torch.Generator().manual_seed(4)
    x, own = sparse_codes(400, 6, gen), sparse_codes(400, 2, gen)
    layout = [("x", 5), ("x", 2), ("dead", 0), ("own", 0), ("x", 0), ("x", 4), ("dead", 0), ("x", 1), ("own", 1),
              ("x", 3)]

    def target(x_rows, own_rows):
        cols = {"x": x_rows, "own": own_rows, "dead": torch.zeros_like(own_rows)}
        return torch.stack([cols[kind][:, j] for kind, j in layout], 1)

    y = target(x, own)
    mapper = Procrustes("procrustes", ProcrustesConfig())
    assert fit(mapper, x, y, space="codes")["paired_features"] == 6
    x_test, own_test = sparse_codes(50, 6, gen), sparse_codes(50, 2, gen)
    pred, want = mapper.predict(x_test), target(x_test, own_test)
    copies = [i for i, (kind, _) in enumerate(layout) if kind == "x"]
    torch.testing.assert_close(pred[:, copies], want[:, copies], atol=1e-5, rtol=0)
    for i in (3, 8):  # the target's own features: their training mean, on every row
        assert torch.allclose(pred[:, i], y[:, i].double().mean().float().expand(50), atol=1e-6)
        assert y[:, i].mean() > 0.1
    assert (pred[:, [2, 6]] == 0).all()  # dead: their training mean, 0


# --- Affine -------------------------------------------------------------------------------------------------

def test_affine_equals_sklearn_ridge_at_the_chosen_penalty(small_chunks):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen) * 2 + 1
    y = x @ torch.randn(5, 3, generator=gen) + 0.5 * torch.randn(300, 3, generator=gen) + 2
    x_val = torch.randn(100, 5, generator=gen) * 2 + 1
    y_val = x_val @ torch.randn(5, 3, generator=gen)  # another map: penalties differ in validation error
    mapper = Affine("affine", AffineConfig(alphas=[0.01, 1.0, 10.0]))
    out = fit(mapper, x, y, x_val, y_val)
    assert str(out["alpha"]) == min(out["validation_sse"], key=out["validation_sse"].get)
    xd = x.double().numpy()
    penalty = out["alpha"] * ((xd - xd.mean(0)) ** 2).sum() / 5  # alpha x tr(XᶜᵀXᶜ) / P
    ridge = Ridge(alpha=penalty, fit_intercept=True).fit(xd, y.double().numpy())
    np.testing.assert_allclose(mapper.weights.numpy(), ridge.coef_.T, atol=1e-10)
    np.testing.assert_allclose(mapper.predict(x_val).numpy(), ridge.predict(x_val.double().numpy()), atol=1e-4)
    for alpha, sse in out["validation_sse"].items():  # each recorded error is that penalty's Ridge error
        other = Ridge(alpha=float(alpha) * ((xd - xd.mean(0)) ** 2).sum() / 5).fit(xd, y.double().numpy())
        want = ((other.predict(x_val.double().numpy()) - y_val.double().numpy()) ** 2).sum()
        assert sse == pytest.approx(want, rel=1e-6)


def test_affine_chooses_the_smallest_penalty_on_noiseless_linear_data_and_reports_its_budget():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 2, generator=gen)
    x, x_val = torch.randn(200, 4, generator=gen), torch.randn(50, 4, generator=gen)
    mapper = Affine("affine", AffineConfig(alphas=[10.0, 1e-6]))
    out = fit(mapper, x, x @ w + 1, x_val, x_val @ w + 1)
    assert out["alpha"] == 1e-6
    assert out["validation_sse"]["1e-06"] < 1e-6 < out["validation_sse"]["10.0"]
    assert {k: out[k] for k in ("parameters", "steps", "rows")} == {"parameters": 4 * 2 + 2, "steps": 0, "rows": 200}
    torch.testing.assert_close(mapper.predict(x_val), x_val @ w + 1, atol=1e-4, rtol=0)


# --- MLP ----------------------------------------------------------------------------------------------------

def test_mlp_loss_terms_by_hand():
    pred = torch.tensor([[2.0, 0.0, 2.0], [0.0, -1.0, 1.0]])
    true = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    terms = loss_terms(pred, true)
    assert terms["mse"].item() == pytest.approx((6 + 9) / 2)  # squared errors summed per row, averaged over rows
    # cosines: row 0 2 / (sqrt 8 sqrt 2) = 0.5; row 1 -1 / (sqrt 2 sqrt 5)
    assert terms["cosine"].item() == pytest.approx(1 - (0.5 - 1 / math.sqrt(10)) / 2, rel=1e-6)
    # two rows: every correlation is ±1. C(pred) is all ones; C(true) has -1 between column 0 and columns 1, 2:
    # four entries differ by 2
    assert terms["correlation"].item() == pytest.approx(4 * 4 / 9, rel=1e-6)
    assert terms["sparsity"].item() == pytest.approx(((3 - 2.5) / 2.5) ** 2, rel=1e-6)  # L1 per row: 3 vs 2.5
    features = loss_terms(pred, true, torch.tensor([0, 2]))  # only the correlation term reads `features`
    assert features["correlation"].item() == pytest.approx(2 * 4 / 4, rel=1e-6)
    assert features["mse"].item() == terms["mse"].item()


def planted_relu_map(seed, n=3000):
    gen = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(8, 16, generator=gen), torch.randn(16, 4, generator=gen) / 4
    x = torch.randn(n, 8, generator=gen)
    return x, torch.relu(x @ w1) @ w2


def small_mlp(**overrides):
    return MLPMappingConfig(**{"hidden": 32, "epochs": 10, "dropout": 0.0, "batch_size": 128, "lr": 1e-2,
                               **overrides})


def test_mlp_fits_a_planted_nonlinear_map_better_than_affine():
    """y = relu(x W1) W2 (8 -> 16 -> 4), 2,000 training rows. Measured over data seeds 0-2: MLP test R² 0.975-0.977,
    affine 0.58-0.72."""
    x, y = planted_relu_map(0)
    train, val, test = slice(0, 2000), slice(2000, 2500), slice(2500, 3000)
    mlp = MLPMapping("mlp", small_mlp())
    out = fit(mlp, x[train], y[train], x[val], y[val])
    affine = Affine("affine", AffineConfig())
    fit(affine, x[train], y[train], x[val], y[val])
    r2_mlp, r2_affine = explained_variance(mlp.predict(x[test]), y[test]), explained_variance(affine.predict(x[test]), y[test])
    assert r2_mlp > 0.93 and r2_affine < 0.8
    assert out["steps"] == 10 * 16 and out["rows"] == 2000
    assert out["parameters"] == sum(p.numel() for p in mlp.net.parameters())


def test_mlp_is_deterministic_by_seed():
    x, y = planted_relu_map(1, n=600)
    preds = []
    for seed in (0, 0, 1):
        mlp = MLPMapping("mlp", small_mlp(epochs=2, dropout=0.1))
        fit(mlp, x[:500], y[:500], x[500:], y[500:], seed=seed)
        preds.append(mlp.predict(x[500:]))
    assert torch.equal(preds[0], preds[1])
    assert not torch.equal(preds[0], preds[2])


def test_mlp_clips_predictions_at_zero_in_codes_space_only():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400, 5, generator=gen)
    y = x @ torch.randn(5, 3, generator=gen)  # half the targets negative: the network predicts negatives
    preds = {}
    for space in ("activations", "codes"):
        mlp = MLPMapping("mlp", small_mlp(epochs=2))
        fit(mlp, x[:300], y[:300], x[300:], y[300:], space=space)
        preds[space] = mlp.predict(x[300:])
    assert (preds["activations"] < 0).float().mean() > 0.2
    assert torch.equal(preds["codes"], preds["activations"].clamp_min(0))  # same seed: the same network
    mlp = MLPMapping("mlp", small_mlp(epochs=2, clip_codes=False))
    fit(mlp, x[:300], y[:300], x[300:], y[300:], space="codes")
    assert torch.equal(mlp.predict(x[300:]), preds["activations"])


def test_mlp_huge_lr_raises_divergence_naming_the_setting():
    x, y = planted_relu_map(3, n=300)
    mlp = MLPMapping("hyper", small_mlp(epochs=3, lr=1e30, batch_size=64))
    with pytest.raises(DivergenceError, match=r"^mapping\.hyper\.lr=1e\+30: .*diverged"):
        fit(mlp, x[:250], y[:250], x[250:], y[250:])


def test_mlp_diverging_on_its_last_step_raises_divergence_naming_the_setting():
    x, y = planted_relu_map(3, n=150)
    mlp = MLPMapping("hyper", small_mlp(epochs=1, lr=1e30, batch_size=128))  # 100 rows: one step in all
    with pytest.raises(DivergenceError, match=r"^mapping\.hyper\.lr=1e\+30"):
        fit(mlp, x[:100], y[:100], x[100:], y[100:])


def test_mlp_keeps_the_epoch_with_the_lowest_validation_loss():
    """Validation rows follow another map than the training rows, so validation loss bottoms out early
    (measured: epoch 4 of 12) and the kept weights are not the last epoch's."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=gen)
    y = torch.tanh(x @ torch.randn(4, 3, generator=gen)) + 0.3 * torch.randn(200, 3, generator=gen)
    x_val = torch.randn(100, 4, generator=gen)
    y_val = torch.tanh(x_val @ torch.randn(4, 3, generator=gen))
    mlp = MLPMapping("mlp", MLPMappingConfig(hidden=16, epochs=12, lr=1e-2, batch_size=128, dropout=0.0))
    out = fit(mlp, x, y, x_val, y_val)
    history = out["validation_loss"]
    assert len(history) == 12
    assert out["kept_epoch"] == int(np.argmin(history)) < 11
    # the kept network's validation loss (one batch of 100 rows, every weight 1 except correlation and sparsity 0.1)
    terms = loss_terms(mlp.predict(x_val) / mlp.scale_y, y_val / mlp.scale_y)
    kept = terms["mse"] + terms["cosine"] + 0.1 * terms["correlation"] + 0.1 * terms["sparsity"]
    assert kept.item() == pytest.approx(min(history), rel=1e-5)


# --- Crosscoder ---------------------------------------------------------------------------------------------

def test_crosscoder_mapping_counts_live_latents_only_and_predicts_in_raw_units(small_chunks):
    """Planted: 10 shared, 5 A-only, 5 B-only features (tests/alignment/test_crosscoder.py), B's activations in
    units 10x larger. BatchTopK with 48 latents leaves some dead (measured: 26 live, classed 5/5/16/0), whose
    untouched decoders (rel 0.5) would otherwise count as 22 more 'shared' latents."""
    _, x_a, x_b = planted(n=2048)
    x_b = 10 * x_b
    cc = CrosscoderMapping("cc", CrosscoderConfig(sparsity="batchtopk", d_latent=48, k=2, epochs=30, lr=1e-2))
    out = cc.fit_pair(x_a, x_b, seed=0)
    with torch.no_grad():
        fired = (cc.model.encode(x_a, x_b) > 0).any(0)
    rel = relative_decoder_norm(cc.model.decoder_norms().detach())
    assert 0 < out["live_latents"] == int(fired.sum()) < 48
    assert out["latent_classes"] == latent_classes(rel[fired])
    assert sum(out["latent_classes"].values()) == out["live_latents"]
    assert out["latent_classes"]["exclusive_a"] >= 4 and out["latent_classes"]["exclusive_b"] >= 4
    assert out["d_latent"] == 48 and out["rows"] == 2048 and out["steps"] == 30 * 8
    assert out["shared_decoder_cosine"] is None  # widths 24 and 32

    to_b, to_a = cc.predict_direction(x_a, "a_to_b"), cc.predict_direction(x_b, "b_to_a")
    assert to_b.shape == (2048, 32) and to_a.shape == (2048, 24)
    torch.testing.assert_close(to_b, cc.model.translate(x_a, "a_to_b"))
    # raw units: B's scale (mean row norm 10.7) is put back. Measured R² 0.33 (A -> B) and 0.37 (B -> A), mean
    # predicted row norm 3.4; the same A -> B output left in normalised units: R² -0.02, row norm 0.32
    assert explained_variance(to_b, x_b) > 0.15 and explained_variance(to_a, x_a) > 0.15
    assert to_b.norm(dim=1).mean() > 1.5


# --- evaluate -----------------------------------------------------------------------------------------------

def test_prediction_measures_by_hand():
    true = torch.tensor([[1.0, 0, 2], [2, 1, 2], [3, 0, 2], [4, 1, 2]])  # column 2 is constant: not a feature
    pred = torch.tensor([[1.0, 0, 2], [2, 0, 2], [3, 1, 2], [5, 1, 2]])
    out = prediction_measures(pred, true, [0.3, 0.5, 0.99])
    cosines = [1.0, 8 / (3 * math.sqrt(8)), 13 / math.sqrt(13 * 14), 25 / math.sqrt(30 * 21)]
    assert out["cosine"] == pytest.approx(np.mean(cosines), rel=1e-6)
    # column means (2.5, 0.5, 2): total squares 5 + 1 + 0 = 6; three unit errors
    assert out["r2"] == pytest.approx(1 - 3 / 6, rel=1e-6)
    # column 0: pred (1,2,3,5) vs (1,2,3,4): 6.5 / sqrt(8.75 * 5); column 1: (0,0,1,1) vs (0,1,0,1): 0
    r0 = 6.5 / math.sqrt(8.75 * 5)
    assert out["feature_correlation"] == pytest.approx(r0 / 2, rel=1e-6)
    assert out["correlated"] == {"0.3": 1, "0.5": 1, "0.99": 0}
    assert out["features"] == 2


@pytest.fixture(scope="module")
def classifier_case():
    """An MLP classifier (5 -> 8 -> 6 -> 3) with a large head so its predictions vary, test rows whose labels are
    its own predictions on 30 of 50 rows, and its own target activations."""
    torch.manual_seed(0)
    model = build_model(MLPConfig(hidden_sizes=[8, 6]), input_dim=5, num_classes=3)
    with torch.no_grad():
        model.head.weight.mul_(10)
        model.head.bias.copy_(torch.tensor([-0.2, 0.0, 0.3]))  # head(0) predicts class 2
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(50, 5, generator=gen)
    with torch.no_grad(), capture_output(model.target_module()) as box:
        predicted = model(x).argmax(1)
    labels = predicted.clone()
    labels[30:] = torch.randint(0, 3, (20,), generator=gen)
    return model, x, labels, box["acts"].clone(), predicted


def test_spliced_accuracy_with_its_own_activation_is_its_own_accuracy(classifier_case):
    model, x, labels, acts, predicted = classifier_case
    own = float((predicted == labels).float().mean())  # measured 0.78
    assert spliced_accuracy(model, x, labels, None, 16, "cpu") == pytest.approx(own)
    assert spliced_accuracy(model, x, labels, acts, 16, "cpu") == pytest.approx(own)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))  # rows are replaced row by row
    with torch.no_grad():
        shuffled = float((model.head(acts[perm]).argmax(1) == labels).float().mean())  # measured 0.54
    assert shuffled != own
    assert spliced_accuracy(model, x, labels, acts[perm], 16, "cpu") == pytest.approx(shuffled)


def test_spliced_accuracy_with_zeros_is_the_accuracy_of_the_head_bias(classifier_case):
    model, x, labels, acts, predicted = classifier_case
    assert int(model.head.bias.argmax()) == 2
    by_hand = float((labels == 2).float().mean())  # every prediction is argmax(head bias); measured 0.62
    assert by_hand != float((predicted == labels).float().mean())
    assert spliced_accuracy(model, x, labels, torch.zeros_like(acts), 16, "cpu") == pytest.approx(by_hand)
