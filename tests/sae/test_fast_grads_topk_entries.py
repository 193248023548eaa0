"""TopK's hand-written training step (fast_grads.topk_loss_and_grads: k kept entries per example, AuxK on the
dead latents) equals autograd on the plain loss: same losses, codes and gradients of every parameter, in the
edge cases too, and a whole training through the trainer ends at autograd's weights."""

from __future__ import annotations

import pytest
import torch

from sae_ception.sae import batchtopk as batchtopk_module
from sae_ception.sae import fast_grads
from sae_ception.sae import topk as topk_module
from sae_ception.sae.base import SparseAutoencoder, TrainingState
from sae_ception.sae.batchtopk import BatchTopKSAEConfig
from sae_ception.sae.topk import TopKSAEConfig

from tests.sae.test_fast_grads import fast, perturbed, reference
from tests.sae.test_fast_grads_jumprelu_batchtopk import assert_same_step, no_dead


@pytest.fixture(autouse=True)
def hand_written_at_any_size(monkeypatch):
    """These tests' batches are small: TopK and BatchTopK would train them with autograd (MIN_HAND_WRITTEN_VALUES)."""
    monkeypatch.setattr(topk_module, "MIN_HAND_WRITTEN_VALUES", 0)
    monkeypatch.setattr(batchtopk_module, "MIN_HAND_WRITTEN_VALUES", 0)


def topk(normalize="standardize", k=3, aux_k=None, d_sae=16, seed=0) -> SparseAutoencoder:
    return perturbed(TopKSAEConfig(d_sae=d_sae, k=k, aux_k=aux_k, normalize=normalize), seed=seed).train()


def dead_latents(count: int, width: int = 16) -> TrainingState:
    dead = torch.zeros(width, dtype=torch.bool)
    dead[torch.randperm(width, generator=torch.Generator().manual_seed(count))[:count]] = True
    return TrainingState(step=0, dead_F=dead, any_dead=True)


AUXK_PATHS = ["dense", "entries", "fixed_size"]  # CPU: GEMMs over the dead columns / kept entries; accelerators'


def use_auxk_path(path: str, monkeypatch) -> list:
    """Make `auxk_entries` take `path`; returns the list of AuxKCodes it produced (to check the path was taken)."""
    produced, auxk = [], fast_grads.auxk_entries
    kwargs = {"dense": dict(dense_factor=float("inf")), "entries": dict(dense_factor=0),
              "fixed_size": dict(fixed_size=True), "default": {}}[path]
    monkeypatch.setattr(fast_grads, "auxk_entries", lambda *a: produced.append(auxk(*a, **kwargs)) or produced[-1])
    return produced


# --- no dead latent -------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", ["none", "scale", "standardize"])
@pytest.mark.parametrize("k", [1, 3, 16])  # 16: every latent (k = d_sae)
def test_topk_step_matches_autograd_while_no_latent_is_dead(normalize, k):
    sae = topk(normalize, k=k)
    x = torch.randn(32, 6, dtype=torch.float64)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert_same_step(out, ref, grads, ref_grads)
    assert ((out.codes_BF != 0).sum(-1) <= k).all() and out.losses["aux"] == 0
    if k < 16:
        assert ((out.codes_BF != 0).sum(-1) == k).all()  # these rows have at least k positive pre-activations


@pytest.mark.parametrize("k", [1, 3, 16])
def test_topk_batch_of_one(k):
    sae = topk(k=k)
    x = torch.randn(1, 6, dtype=torch.float64)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert_same_step(out, ref, grads, ref_grads)


def test_topk_with_fewer_positive_pre_activations_than_k():
    """ReLU after the top-k: kept entries at 0 get no gradient and do not count as firing."""
    sae, x = topk(k=8), torch.randn(32, 6, dtype=torch.float64)
    with torch.no_grad():  # about a fifth of the pre-activations > 0, where k is half of a row
        sae.b_enc_F.sub_(sae.pre_activation(sae.normalize(x)).quantile(0.8))
    positive = (sae.pre_activation(sae.normalize(x)) > 0).sum(-1)
    assert (positive < 8).any() and (positive > 0).any()
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert torch.equal((out.codes_BF != 0).sum(-1), positive.clamp_max(8))
    assert_same_step(out, ref, grads, ref_grads)


def test_topk_with_no_positive_pre_activation():
    sae = topk()
    with torch.no_grad():
        sae.b_enc_F.sub_(100.0)
    x = torch.randn(8, 6, dtype=torch.float64)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert (out.codes_BF == 0).all() and out.l0 == 0 and not out.fired_F.any()
    assert_same_step(out, ref, grads, ref_grads)
    for name in ("W_enc_DF", "b_enc_F", "W_dec_FD"):
        assert (grads[name] == 0).all(), name  # no code fired: only b_dec learns


def tied_pair(k: int) -> tuple[SparseAutoencoder, torch.Tensor]:
    """Latents 0 and 1 read the same direction with the same bias (equal pre-activations in every row, above
    every other latent's) but write different decoder rows."""
    sae = topk(k=k)
    with torch.no_grad():
        sae.W_enc_DF[:, 1] = sae.W_enc_DF[:, 0]
        sae.b_enc_F[1] = sae.b_enc_F[0] = 50.0
    x = torch.randn(32, 6, dtype=torch.float64)
    pre = sae.pre_activation(sae.normalize(x)).detach()
    assert torch.equal(pre[:, 0], pre[:, 1]) and (pre[:, :2].min(-1).values > pre[:, 2:].max(-1).values).all()
    return sae, x


def test_topk_ties_inside_the_top_k_keep_both():
    sae, x = tied_pair(k=2)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert (out.codes_BF[:, :2] > 0).all() and (out.codes_BF[:, 2:] == 0).all()
    assert_same_step(out, ref, grads, ref_grads)


def test_topk_ties_at_the_cut_keep_exactly_k_and_their_gradients_are_the_chosen_ones():
    """k = 1 and two equal largest pre-activations: one of them is kept (torch.topk's choice, unspecified), and
    the gradients are autograd's through the codes actually kept (ReLU of pre on that support)."""
    sae, x = tied_pair(k=1)
    out, grads = fast(sae, x, no_dead(16))
    kept = out.codes_BF != 0
    assert (kept.sum(-1) == 1).all() and kept[:, :2].all(-1).logical_not().all() and kept[:, :2].any(-1).all()
    sae.zero_grad(set_to_none=True)
    x_norm = sae.normalize(x)
    pre = sae.pre_activation(x_norm)
    codes = pre.relu() * kept
    recon = sae.decode_normalized(codes)
    mse = (recon - x_norm).pow(2).mean()
    mse.backward()
    torch.testing.assert_close(out.losses["mse"], mse.detach())
    torch.testing.assert_close(out.codes_BF, codes.detach())
    for name, param in sae.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)


def test_topk_float32_matches_autograd():
    sae = topk().float()
    x = torch.randn(64, 6)
    ref, ref_grads = reference(sae, x, no_dead(16))
    out, grads = fast(sae, x, no_dead(16))
    assert_same_step(out, ref, grads, ref_grads)


def test_topk_in_eval_mode_is_hand_written_too():
    """TopK's codes do not depend on the mode (BatchTopK's do), so eval mode keeps the hand-written step."""
    sae = topk(aux_k=4).eval()
    x = torch.randn(32, 6, dtype=torch.float64)
    for state in (no_dead(16), dead_latents(8), None):
        ref, ref_grads = reference(sae, x, state)
        out, grads = fast(sae, x, state)
        assert out.fired_F is not None  # the hand-written step's (autograd's leaves it to the trainer)
        assert_same_step(out, ref, grads, ref_grads)


def test_topk_small_cpu_batches_take_the_autograd_path(monkeypatch):
    monkeypatch.setattr(topk_module, "MIN_HAND_WRITTEN_VALUES", 32 * 16 + 1)
    monkeypatch.setattr(topk_module, "topk_loss_and_grads", None)  # would fail if called
    sae = topk(aux_k=4)
    x = torch.randn(32, 6, dtype=torch.float64)
    for state in (no_dead(16), dead_latents(8)):
        ref, ref_grads = reference(sae, x, state)
        out, grads = fast(sae, x, state)
        assert out.fired_F is None  # what the autograd step leaves to the trainer
        torch.testing.assert_close(out.losses["total"], ref.losses["total"])
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


# --- AuxK -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dead_count, aux_k", [(8, 3), (8, 10), (16, 4), (1, 3), (13, 2)])  # more or fewer
@pytest.mark.parametrize("path", AUXK_PATHS)                                   # dead than aux_k, all, one
@pytest.mark.parametrize("normalize", ["none", "scale", "standardize"])
def test_topk_step_with_dead_latents_matches_autograd_with_auxk(dead_count, aux_k, path, normalize, monkeypatch):
    produced = use_auxk_path(path, monkeypatch)
    sae = topk(normalize, aux_k=aux_k)
    x = torch.randn(32, 6, dtype=torch.float64)
    state = dead_latents(dead_count)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert len(produced) == 1 and produced[0].dense == (path == "dense")
    assert out.losses["aux"] > 0
    assert_same_step(out, ref, grads, ref_grads)
    # AuxK moves the dead latents' decoder rows and encoder columns beyond what the main loss does
    _, without_auxk = fast(sae, x, no_dead(16))
    dead = state.dead_F
    assert (grads["W_dec_FD"][dead] - without_auxk["W_dec_FD"][dead]).abs().max() > 1e-6
    assert (grads["W_enc_DF"][:, dead] - without_auxk["W_enc_DF"][:, dead]).abs().max() > 1e-6


@pytest.mark.parametrize("path", AUXK_PATHS)
def test_topk_batch_of_one_with_dead_latents(path, monkeypatch):
    use_auxk_path(path, monkeypatch)
    sae = topk("scale", aux_k=4)
    x = torch.randn(1, 6, dtype=torch.float64)
    state = TrainingState(step=0, dead_F=torch.arange(16) % 2 == 0, any_dead=True)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert_same_step(out, ref, grads, ref_grads)


@pytest.mark.parametrize("path", AUXK_PATHS)
def test_auxk_with_no_positive_dead_pre_activation(path, monkeypatch):
    """Every AuxK code is 0: aux is the whole residual (‖r‖² / ‖r‖² = 1) and gives no gradient."""
    use_auxk_path(path, monkeypatch)
    sae = topk(aux_k=4)
    state = dead_latents(8)
    with torch.no_grad():
        sae.b_enc_F[state.dead_F] = -100.0
    x = torch.randn(32, 6, dtype=torch.float64)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    torch.testing.assert_close(out.losses["aux"], torch.tensor(1.0, dtype=torch.float64))
    assert_same_step(out, ref, grads, ref_grads)


@pytest.mark.parametrize("sae_type", ["topk", "batchtopk"])
@pytest.mark.parametrize("path", AUXK_PATHS)
def test_dead_hint_set_but_no_latent_dead_gives_no_auxk(sae_type, path, monkeypatch):
    """The trainer's any_dead hint lags on accelerators: the fixed-size selection then finds only live latents
    (codes 0), and AuxK must still be 0, as TopKSAE.auxiliary_losses gates it."""
    use_auxk_path(path, monkeypatch)
    sae = topk() if sae_type == "topk" else perturbed(BatchTopKSAEConfig(d_sae=16, k=3)).train()
    x = torch.randn(32, 6, dtype=torch.float64)
    state = TrainingState(step=0, dead_F=torch.zeros(16, dtype=torch.bool), any_dead=True)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert out.losses["aux"] == 0
    assert_same_step(out, ref, grads, ref_grads)


@pytest.mark.parametrize("path", AUXK_PATHS)
def test_batchtopk_auxk_paths_match_autograd(path, monkeypatch):
    """BatchTopK shares the step after the selection (`_entries_loss_and_grads`): its AuxK on every path."""
    use_auxk_path(path, monkeypatch)
    sae = perturbed(BatchTopKSAEConfig(d_sae=16, k=3, aux_k=3, normalize="standardize")).train()
    x = torch.randn(32, 6, dtype=torch.float64)
    state = dead_latents(8)
    ref, ref_grads = reference(sae, x, state)
    out, grads = fast(sae, x, state)
    assert out.losses["aux"] > 0
    assert_same_step(out, ref, grads, ref_grads)


def test_auxk_takes_gemms_over_few_dead_columns_and_entries_over_many():
    pre = torch.randn(8, 64, dtype=torch.float64)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:20] = True
    few = fast_grads.auxk_entries(pre, dead, 5, dense_factor=4)  # 20 dead <= 4 x 5
    many = fast_grads.auxk_entries(pre, dead, 4, dense_factor=4)  # 20 dead > 4 x 4
    assert few.dense and few.codes_BM.shape == (8, 20) and torch.equal(few.latents_BM, torch.arange(20))
    assert ((few.codes_BM != 0).sum(-1) <= 5).all()
    assert not many.dense and many.latents_BM.shape == (8, 4)
    as_dense = lambda aux: pre.new_zeros(8, 64).index_put_(  # noqa: E731
        (torch.arange(8).unsqueeze(1).expand_as(aux.codes_BM), aux.latents_BM.expand_as(aux.codes_BM)),
        aux.codes_BM)
    expected = topk_module.keep_top_k(pre.masked_fill(~dead, float("-inf")), 5)
    torch.testing.assert_close(as_dense(few), expected)
    torch.testing.assert_close(as_dense(many), topk_module.keep_top_k(pre.masked_fill(~dead, float("-inf")), 4))
    assert fast_grads.auxk_entries(pre, torch.zeros(64, dtype=torch.bool), 4) is None


# --- non-finite values ----------------------------------------------------------------------------------
def poison(sae: SparseAutoencoder, where: str) -> None:
    with torch.no_grad():
        if where == "W_enc":
            sae.W_enc_DF[0, 3] = float("nan")
        elif where == "b_dec":
            sae.b_dec_D[2] = float("nan")
        elif where == "W_dec_unread":  # a decoder row no kept entry reads: only forward's dense decoder sees it
            sae.b_enc_F[5] = -1e3
            sae.W_dec_FD[5, 1] = float("nan")
        elif where == "W_dec_inf":
            sae.b_enc_F[5] = -1e3
            sae.W_dec_FD[5, 1] = float("inf")


@pytest.mark.parametrize("sae_type", ["topk", "batchtopk"])
@pytest.mark.parametrize("where", ["W_enc", "b_dec", "W_dec_unread", "W_dec_inf", "input"])
@pytest.mark.parametrize("dead", [False, True])
def test_non_finite_weights_or_inputs_give_a_non_finite_loss_as_autograd_does(sae_type, where, dead):
    """A diverging run must show in the loss (the trainer stops on it)."""
    sae = topk(aux_k=4) if sae_type == "topk" else perturbed(BatchTopKSAEConfig(d_sae=16, k=3, aux_k=4)).train()
    poison(sae, where)
    x = torch.randn(32, 6, dtype=torch.float64)
    if where == "input":
        x[7, 2] = float("nan")
    state = dead_latents(8) if dead else no_dead(16)
    if where.startswith("W_dec"):
        assert (sae.pre_activation(sae.normalize(x))[:, 5] < 0).all()  # never kept, never in AuxK's codes
    ref, _ = reference(sae, x, state)
    out, _ = fast(sae, x, state)
    assert not ref.losses["total"].isfinite() and not out.losses["total"].isfinite()
    if where != "input":
        clean = topk(aux_k=4) if sae_type == "topk" else perturbed(BatchTopKSAEConfig(d_sae=16, k=3, aux_k=4)).train()
        assert fast(clean, x, state)[0].losses["total"].isfinite()


# --- whole trainings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("auxk_path", ["default", "dense", "entries"])
def test_training_with_the_hand_written_step_equals_training_with_autograd(auxk_path, accelerator, monkeypatch):
    """Three epochs through the trainer (Adam, gradient clipping that bites, unit decoder rows, the workspace
    reused across steps; AuxK once latents die after the first epoch, over 21 to 65 dead latents: with aux_k 8
    the default takes GEMMs over the dead columns, then entries) end at autograd's weights."""
    from sae_ception.sae import train_sae

    from tests.sae.helpers import make_sae, sparse_data

    produced = use_auxk_path(auxk_path, monkeypatch)
    hand_written, calls = topk_module.topk_loss_and_grads, []

    def recorded(sae, x_BD, k, dead_F=None, aux_k=None):
        out = hand_written(sae, x_BD, k, dead_F=dead_F, aux_k=aux_k)
        norm = torch.cat([p.grad.reshape(-1) for p in sae.parameters()]).norm()
        calls.append((dead_F is not None and bool(dead_F.any()), float(out.losses["aux"]), float(norm)))
        return out

    monkeypatch.setattr(topk_module, "topk_loss_and_grads", recorded)
    acts = sparse_data(n=512)
    settings = dict(d_in=16, d_sae=128, k=2, aux_k=8, epochs=3, batch_size=64, lr=1e-2, log_every=5, grad_clip=0.02)
    hand = make_sae("topk", **settings)
    train_sae(hand, acts, hand.cfg, accelerator=accelerator, seed=0, show_progress=False)
    assert len(calls) == 24  # every step
    assert not any(dead for dead, _, _ in calls[:8]) and all(dead and aux > 0 for dead, aux, _ in calls[8:])
    assert max(norm for _, _, norm in calls) > settings["grad_clip"]  # clipping changes the steps
    paths = {aux.dense for aux in produced}
    assert paths == {"default": {True, False}, "dense": {True}, "entries": {False}}[auxk_path]
    monkeypatch.setattr(type(hand), "loss_and_grads", SparseAutoencoder.loss_and_grads)
    auto = make_sae("topk", **settings)
    train_sae(auto, acts, auto.cfg, accelerator=accelerator, seed=0, show_progress=False)
    for (name, a), b in zip(hand.state_dict().items(), auto.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_transposed_copy_in_blocks_of_latents():
    src = torch.randn(2 * fast_grads.TRANSPOSE_BLOCK + 37, 11)  # a ragged last block
    out = fast_grads._transposed_copy(torch.empty(11, len(src)), src)
    assert torch.equal(out, src.T)
