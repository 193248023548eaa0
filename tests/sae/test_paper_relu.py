"""The paper's SAE (sae=paper_relu) against hand-computed values and against the paper's own formulation:
nn.Linear encoder and decoder, loss nn.MSELoss() + λ·mean|codes|, plain Adam, free decoder, raw inputs."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sae_ception.errors import ConfigError
from sae_ception.sae import TrainingState, build_sae, load_sae, train_sae
from sae_ception.sae.paper_relu import PaperReluSAE, PaperReluSAEConfig
from sae_ception.utils.batching import shuffled_batches

from tests.sae.helpers import make_sae, sparse_data

YAML = Path(__file__).resolve().parents[2] / "configs" / "sae" / "paper_relu.yaml"


def _hand_set_sae(l1_coefficient=0.75):
    """d_in=2, d_sae=3, weights by hand; decoder rows of norms 1, 2, √2 and a non-zero decoder bias."""
    sae = build_sae(PaperReluSAEConfig(d_sae=3, l1_coefficient=l1_coefficient), d_in=2)
    with torch.no_grad():
        sae.W_enc_DF.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc_F.copy_(torch.tensor([0.0, -0.5, 0.0]))
        sae.W_dec_FD.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]]))
        sae.b_dec_D.copy_(torch.tensor([1.0, -1.0]))
    return sae


def _paper_modules(sae):
    """The paper's nn.Linear pair holding `sae`'s weights (nn.Linear stores weight as [out, in])."""
    encoder, decoder = nn.Linear(sae.d_in, sae.d_sae), nn.Linear(sae.d_sae, sae.d_in)
    with torch.no_grad():
        encoder.weight.copy_(sae.W_enc_DF.T)
        encoder.bias.copy_(sae.b_enc_F)
        decoder.weight.copy_(sae.W_dec_FD.T)
        decoder.bias.copy_(sae.b_dec_D)
    return encoder, decoder


def _paper_loss(encoder, decoder, x, l1_lambda):
    """The paper's SparseAutoencoder.loss: nn.MSELoss()(recon, x) + λ · torch.mean(torch.abs(codes))."""
    codes = torch.relu(encoder(x))
    return nn.MSELoss()(decoder(codes), x) + l1_lambda * torch.mean(torch.abs(codes))


def _assert_same_weights(sae, encoder, decoder, **tolerance):
    torch.testing.assert_close(sae.W_enc_DF, encoder.weight.T, **tolerance)
    torch.testing.assert_close(sae.b_enc_F, encoder.bias, **tolerance)
    torch.testing.assert_close(sae.W_dec_FD, decoder.weight.T, **tolerance)
    torch.testing.assert_close(sae.b_dec_D, decoder.bias, **tolerance)


def test_loss_by_hand_is_mse_mean_plus_lambda_times_mean_abs_code():
    sae = _hand_set_sae(l1_coefficient=0.75)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    out = sae(x)
    # x W_enc + b_enc (b_dec is NOT subtracted first): [1, 1.5, -1] and [3, -1.5, 4] -> codes [1, 1.5, 0], [3, 0, 4]
    assert torch.equal(out.codes_BF, torch.tensor([[1.0, 1.5, 0.0], [3.0, 0.0, 4.0]]))
    # recon: [1,0] + 1.5·[0,2] + [1,-1] = [2, 2];  3·[1,0] + 4·[1,-1] + [1,-1] = [8, -5]
    torch.testing.assert_close(out.recon, torch.tensor([[2.0, 2.0], [8.0, -5.0]]))
    # errors [1, 0] and [5, -4]: (1 + 0 + 25 + 16) / 4 elements; |codes| 9.5 over 2 rows x 3 latents
    assert out.losses["mse"].item() == pytest.approx(42 / 4)
    assert out.losses["l1_mean"].item() == pytest.approx(9.5 / 6)
    assert out.losses["total"].item() == pytest.approx(42 / 4 + 0.75 * 9.5 / 6)
    assert out.losses["total"].item() == pytest.approx(_paper_loss(*_paper_modules(sae), x, 0.75).item())


def test_gradients_match_autograd_of_the_papers_formula():
    torch.manual_seed(1)
    sae = make_sae("paper_relu", d_in=8, d_sae=32, l1_coefficient=0.75)
    x = torch.randn(64, 8) * 3 + 1
    encoder, decoder = _paper_modules(sae)
    _paper_loss(encoder, decoder, x, 0.75).backward()
    out = sae.loss_and_grads(x, TrainingState(step=3))  # what the trainer calls
    assert out.losses["total"].item() == pytest.approx(_paper_loss(encoder, decoder, x, 0.75).item(), rel=1e-6)
    torch.testing.assert_close(sae.W_enc_DF.grad, encoder.weight.grad.T)
    torch.testing.assert_close(sae.b_enc_F.grad, encoder.bias.grad)
    torch.testing.assert_close(sae.W_dec_FD.grad, decoder.weight.grad.T)
    torch.testing.assert_close(sae.b_dec_D.grad, decoder.bias.grad)


@pytest.mark.parametrize("seed", [0, 7])
def test_initialisation_is_pytorchs_nn_linear_default_in_the_papers_order(seed):
    torch.manual_seed(seed)
    sae = build_sae(PaperReluSAEConfig(), d_in=16)
    after_sae = torch.rand(3)
    torch.manual_seed(seed)  # the paper: SparseAutoencoder(16, 256) builds nn.Linear(16, 256), then nn.Linear(256, 16)
    encoder, decoder = nn.Linear(16, 256), nn.Linear(256, 16)
    _assert_same_weights(sae, encoder, decoder, rtol=0, atol=0)
    assert torch.equal(after_sae, torch.rand(3))  # the generator is left where the paper's init leaves it
    # kaiming-uniform(a=√5) weights and default biases: U(±1/√fan_in), fan_in d_in = 16 and d_sae = 256
    assert sae.W_enc_DF.abs().max() <= 0.25 and sae.b_enc_F.abs().max() <= 0.25 and sae.b_enc_F.abs().max() > 0.2
    assert sae.W_dec_FD.abs().max() <= 1 / 16 and sae.b_dec_D.abs().max() <= 1 / 16
    assert not torch.allclose(sae.W_enc_DF, sae.W_dec_FD.T)  # untied


def test_inputs_are_not_normalised_and_the_init_is_not_fitted_to_the_data():
    sae = make_sae("paper_relu", d_in=8, d_sae=32, normalize="none")
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    acts = torch.randn(256, 8) * 10 + 100  # far from mean 0 / unit scale
    sae.set_normalization(acts)
    assert all(torch.equal(v, sae.state_dict()[k]) for k, v in before.items())  # buffers identity, b_dec/W_enc kept
    assert torch.equal(sae.normalize(acts), acts)
    torch.testing.assert_close(sae.encode(acts), torch.relu(acts @ sae.W_enc_DF + sae.b_enc_F))
    torch.testing.assert_close(sae.decode(torch.zeros(1, 32)), sae.b_dec_D[None])


def test_training_is_the_papers_adam_loop_step_for_step(accelerator):
    """train_sae == the paper's loop (plain torch Adam on its loss, batch 64) over the same batches: so no
    normalisation, warmup, clipping, gradient projection, decoder renormalisation or end-of-training fold."""
    acts = sparse_data(n=256, d=16) * 20  # gradients far above norm 1: clipping would change the steps
    sae = make_sae("paper_relu", d_in=16, d_sae=64, epochs=3, batch_size=64, l1_coefficient=0.75)
    assert sae.cfg.grad_clip is None and sae.cfg.lr == 1e-3
    encoder, decoder = _paper_modules(sae)
    train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=5, show_progress=False)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()])  # lr 1e-3, no weight decay
    generator = torch.Generator().manual_seed(5)  # the trainer's batch order for seed 5
    for _ in range(3):
        for idx in shuffled_batches(len(acts), 64, generator):
            optimizer.zero_grad()
            _paper_loss(encoder, decoder, acts[idx], 0.75).backward()
            optimizer.step()
    _assert_same_weights(sae, encoder, decoder, rtol=1e-4, atol=1e-6)
    norms = sae.W_dec_FD.norm(dim=-1)
    assert (norms - 1).abs().min() > 0.1  # the rows kept nn.Linear's small norms: never renormalised nor folded


def test_decoder_rows_and_their_gradient_are_left_alone():
    sae = make_sae("paper_relu", d_in=8, d_sae=32)
    with torch.no_grad():
        sae.W_dec_FD.mul_(3.0)
    rows, grad = sae.W_dec_FD.detach().clone(), torch.randn(32, 8)
    sae.W_dec_FD.grad = grad.clone()
    sae.remove_parallel_decoder_grad_()
    sae.normalize_decoder_()
    sae.finish_training_(torch.randn(64, 8))
    assert torch.equal(sae.W_dec_FD, rows) and torch.equal(sae.W_dec_FD.grad, grad)


def test_save_load_round_trip_gives_identical_codes(accelerator, tmp_path):
    acts = sparse_data(n=256, d=16)
    sae = make_sae("paper_relu", d_in=16, d_sae=64, epochs=2, lr=1e-2)
    train_sae(sae, acts, sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is PaperReluSAE and loaded.cfg == sae.cfg
    assert torch.equal(loaded.encode(acts), sae.encode(acts)) and (sae.encode(acts) > 0).any()
    assert torch.equal(loaded.W_dec_FD, sae.W_dec_FD)  # the free rows, as trained


def test_yaml_holds_the_papers_settings():
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PaperReluSAEConfig), OmegaConf.load(YAML)))
    paper = {"type": "paper_relu", "d_sae": 256, "normalize": "none", "l1_coefficient": 0.75, "epochs": 20,
             "batch_size": 64, "lr": 1e-3, "lr_warmup_steps": 0, "grad_clip": None, "target_l0": None}
    assert {key: getattr(cfg, key) for key in paper} == paper
    assert {key: getattr(PaperReluSAEConfig(), key) for key in paper} == paper  # the class defaults agree


def test_negative_l1_coefficient_is_one_config_line():
    with pytest.raises(ConfigError, match=r"^sae\.l1_coefficient=-1\.0 must be >= 0$"):
        PaperReluSAEConfig(l1_coefficient=-1.0)


def test_target_l0_calibrates_the_papers_coefficient(accelerator):
    from sae_ception.sae.calibration import calibrate_penalty

    acts = sparse_data(n=640, d=16)
    cfg = make_sae("paper_relu", d_in=16, d_sae=64, epochs=2, lr=1e-2, target_l0=6.0).cfg
    calibrated, record = calibrate_penalty(cfg, acts[:512], acts[512:], accelerator=accelerator, seed=0, max_trials=4)
    assert record["setting"] == "l1_coefficient" and len(record["trials"]) >= 2
    assert isinstance(calibrated, PaperReluSAEConfig) and calibrated.l1_coefficient == record["coefficient"]
    l0s = [trial["val_l0"] for trial in sorted(record["trials"], key=lambda t: t["l1_coefficient"])]
    assert l0s[0] >= l0s[-1]  # a larger coefficient gives sparser codes
