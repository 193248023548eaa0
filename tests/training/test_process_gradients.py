"""Two processes (gloo, spawned here) compute what one process computes: the classifier's weighted step gradient
(DDP, gradient accumulation, a process left without rows in a micro-batch), the SAE's weighted step (its own
collective: gradients, fired latents, the batch mean), and whole trainings of both (global batches, uneven last
batch). Each process runs the same `_results` as this one, so a wrong weight or shard changes the numbers.
Also with two processes: a classifier with a parameter off its forward path trains (DDP would stop otherwise);
each process draws its own dropout masks while rank 0 keeps one process's stream; an SAE started from another
initialisation on rank 1 trains as rank 0's; and a refusal before the run starts stops every process."""

import os
import socket

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from sae_ception.cli import agreed_refusal
from sae_ception.data import Split
from sae_ception.errors import ArtifactError
from sae_ception.models import build_model
from sae_ception.models.mlp import MLPConfig
from sae_ception.sae.base import TrainingState
from sae_ception.sae.trainer import _step_over_processes, train_sae
from sae_ception.training.classifier import AuxiliaryTargets, ClassifierSchedule, _step, train_classifier
from sae_ception.utils.batching import process_shares
from sae_ception.utils.device import make_accelerator
from tests.sae.helpers import make_sae, sparse_data

WORLD = 2


def _classifier():
    torch.manual_seed(0)
    return build_model(MLPConfig(hidden_sizes=[8, 4]), input_dim=6, num_classes=3)


def _data(n=101):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(1))
    return Split(x=x, y=(x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _aux(n=101):
    return AuxiliaryTargets(torch.randn(n, 4, generator=torch.Generator().manual_seed(2)), weight=0.5)


def _classifier_step(accelerator, batch):
    """The gradient `_step` leaves for a 7-row batch in micro-batches of 3 (the last one: 1 row, so the second
    process has none there)."""
    model = _classifier()
    ddp = accelerator.prepare(model)
    aux = _aux()
    shares = process_shares(batch, accelerator.process_index, accelerator.num_processes, micro_size=3)
    _step(ddp, model, _data(), shares, aux.targets_ND, aux.center(torch.device("cpu")), aux, accelerator)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _sae_step(accelerator, sae_type):
    """Parameters after one plain SGD step (lr 1: the parameter change is the averaged gradient itself), with the
    fired latents and the batch mean the step reports, on a 13-row batch."""
    sae = make_sae(sae_type, d_in=16, d_sae=32, grad_clip=None)
    acts = sparse_data(n=64)
    sae.set_normalization(acts)
    batch = torch.arange(3, 16)
    share = process_shares(batch, accelerator.process_index, accelerator.num_processes)[0]
    out = sae.loss_and_grads(acts[share.rows], TrainingState(any_dead=False))
    optimizer = torch.optim.SGD(sae.parameters(), lr=1.0)
    fired_F, center_D = _step_over_processes(sae, optimizer, accelerator, sae.cfg, out, acts[share.rows], share,
                                             len(batch))
    if center_D is None:
        center_D = acts[batch].mean(0)
    params = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    return {"params": params, "fired": fired_F, "center": center_D}


def _off_forward_path(accelerator):
    """Two epochs with gradient accumulation of a classifier holding an unused layer, which stays as it was."""
    model = _classifier()
    model.pooler = nn.Linear(4, 4)  # never read by the forward, like a pretrained encoder's pooler
    before = model.pooler.weight.detach().clone()
    trained, _ = train_classifier(model, _data(), _data(), ClassifierSchedule(epochs=2, batch_size=16, lr=1e-2,
                                                                               gradient_accumulation_steps=2),
                                  accelerator=accelerator, generator=torch.Generator().manual_seed(0),
                                  stage="baseline", show_progress=False)
    return {"pooler_unchanged": torch.equal(trained.pooler.weight, before),
            "trained": {k: v.detach().clone() for k, v in trained.state_dict().items()}}


def _dropout_streams(accelerator):
    """The global generator's state just before training, at the first dropout draw (which the mask is drawn
    from) and once training is over, for an MLP with dropout 0.5."""
    torch.manual_seed(5)
    model = build_model(MLPConfig(hidden_sizes=[8, 4], dropout=0.5), input_dim=6, num_classes=3)
    seen = {}

    def first_draw(module, inputs):
        if module.training:  # in eval mode (the probe for unused parameters) dropout draws nothing
            seen.setdefault("at_first_draw", torch.get_rng_state())

    model.block_list()[0][2].register_forward_pre_hook(first_draw)
    seen["before"] = torch.get_rng_state()
    train_classifier(model, _data(), _data(), ClassifierSchedule(epochs=1, batch_size=16, lr=1e-2),
                     accelerator=accelerator, generator=torch.Generator().manual_seed(0), stage="baseline",
                     show_progress=False)
    seen["after"] = torch.get_rng_state()
    return seen


def _refusals(accelerator):
    """`agreed_refusal` when both processes refuse alike, when only rank 1 refuses, and when none does."""
    rank = accelerator.process_index
    same = agreed_refusal(accelerator, ArtifactError("inputs.sae: wrong width"))
    own = agreed_refusal(accelerator, ArtifactError("a file only rank 1 lacks") if rank == 1 else None)
    none = agreed_refusal(accelerator, None)
    return {name: None if error is None else (type(error).__name__, str(error), getattr(error, "own_error", False))
            for name, error in (("same", same), ("own", own), ("none", none))}


def _results(accelerator):
    batch = torch.tensor([5, 17, 2, 40, 33, 8, 61])
    model = _classifier()
    train = _data()
    trained, info = train_classifier(model, train, train, ClassifierSchedule(epochs=2, batch_size=16, lr=1e-2,
                                                                             gradient_accumulation_steps=2),
                                     accelerator=accelerator, generator=torch.Generator().manual_seed(0),
                                     stage="baseline", show_progress=False)
    sae = make_sae("relu", d_in=16, d_sae=32, epochs=2, batch_size=32, log_every=3)
    stats = train_sae(sae, sparse_data(n=203), sae.cfg, accelerator=accelerator, seed=0, show_progress=False)
    # rank 1 initialised differently on purpose: training starts from rank 0's SAE on every process
    other_init = make_sae("relu", d_in=16, d_sae=32, epochs=1, batch_size=32, seed=accelerator.process_index)
    train_sae(other_init, sparse_data(n=64), other_init.cfg, accelerator=accelerator, seed=0, show_progress=False)
    return {
        "off_forward_path": _off_forward_path(accelerator),
        "dropout": _dropout_streams(accelerator),
        "refusals": _refusals(accelerator) if accelerator.num_processes > 1 else None,
        "sae_other_init": {k: v.detach().clone() for k, v in other_init.state_dict().items()},
        "classifier_step": _classifier_step(accelerator, batch),
        "sae_step": {t: _sae_step(accelerator, t) for t in ("relu", "topk")},
        "classifier": {k: v.detach().clone() for k, v in trained.state_dict().items()},
        "classifier_history": info["history"],
        "sae": {k: v.detach().clone() for k, v in sae.state_dict().items()},
        "sae_stats": {k: stats[k] for k in ("mse", "l0", "explained_variance", "dead_fraction", "steps")},
    }


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    # device=auto on a machine without CUDA: accelerate must still join both processes (not two lone mains)
    accelerator = make_accelerator("cpu" if torch.cuda.is_available() else "auto", "no")
    assert accelerator.num_processes == WORLD and accelerator.distributed_type.value == "MULTI_CPU"
    torch.save(_results(accelerator), f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ranks")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return _results(Accelerator(cpu=True)), ranks


def _close(a, b, rtol=1e-5, atol=1e-6):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _close(a[key], b[key], rtol, atol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, rtol, atol)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    else:
        assert a == pytest.approx(b, rel=rtol, abs=atol)


def test_the_classifier_step_gradient_is_the_single_process_batch_mean(outcomes):
    single, ranks = outcomes
    for rank in ranks:
        _close(single["classifier_step"], rank["classifier_step"])
    model, train, aux, batch = _classifier(), _data(), _aux(), torch.tensor([5, 17, 2, 40, 33, 8, 61])
    with model.capture_target() as captured:  # by hand: the mean loss over the 7 rows, no micro-batches
        loss = F.cross_entropy(model(train.x[batch]), train.y[batch])
        loss = loss + 0.5 * (1 - F.cosine_similarity(captured.acts, aux.targets_ND[batch], dim=-1)).mean()
    loss.backward()
    _close({n: p.grad for n, p in model.named_parameters()}, single["classifier_step"])


def test_the_sae_step_is_the_single_process_step_and_every_process_agrees_on_fired_latents(outcomes):
    single, ranks = outcomes
    for rank in ranks:
        for sae_type in ("relu", "topk"):
            _close(single["sae_step"][sae_type], rank["sae_step"][sae_type])
            assert torch.equal(single["sae_step"][sae_type]["fired"], rank["sae_step"][sae_type]["fired"])


def test_whole_trainings_match_one_process(outcomes):
    single, ranks = outcomes
    for rank in ranks:
        _close(single["classifier"], rank["classifier"], rtol=1e-4, atol=1e-5)
        _close(single["classifier_history"], rank["classifier_history"], rtol=1e-4, atol=1e-5)
        _close(single["sae"], rank["sae"], rtol=1e-4, atol=1e-5)
        _close(single["sae_stats"], rank["sae_stats"], rtol=1e-4, atol=1e-5)
    assert single["sae_stats"]["steps"] == 2 * 7  # ceil(203 / 32) global batches per epoch, as one process


def test_a_parameter_off_the_forward_path_is_left_untrained_and_ddp_trains_the_rest(outcomes):
    single, ranks = outcomes
    for result in (single, *ranks):
        assert result["off_forward_path"]["pooler_unchanged"]
    for rank in ranks:
        _close(single["off_forward_path"]["trained"], rank["off_forward_path"]["trained"], rtol=1e-4, atol=1e-5)


def test_each_process_draws_its_own_dropout_masks_and_rank_0_keeps_the_single_process_stream(outcomes):
    single, (rank0, rank1) = outcomes
    for result in (single, rank0):  # no random number drawn before the first mask (the probe runs in eval mode)
        assert torch.equal(result["dropout"]["at_first_draw"], result["dropout"]["before"])
    assert torch.equal(rank0["dropout"]["before"], rank1["dropout"]["before"])  # seeded alike, initialised alike
    # rank 1 draws its masks from its own state (with the same one, its rows got rank 0's masks)
    assert not torch.equal(rank1["dropout"]["at_first_draw"], rank0["dropout"]["at_first_draw"])
    assert torch.equal(rank0["dropout"]["after"], rank1["dropout"]["after"])  # then rank 0's stream everywhere


def test_every_process_trains_the_sae_from_rank_0s_initialisation(outcomes):
    single, ranks = outcomes
    inits = [make_sae("relu", d_in=16, d_sae=32, seed=seed).state_dict() for seed in (0, 1)]
    assert any(not torch.equal(inits[0][k], inits[1][k]) for k in inits[0])  # rank 1 starts elsewhere
    for rank in ranks:
        _close(single["sae_other_init"], rank["sae_other_init"], rtol=1e-4, atol=1e-5)


def test_a_refusal_before_the_run_starts_stops_every_process_and_is_printed_once(outcomes):
    _, (rank0, rank1) = outcomes
    assert rank0["refusals"]["same"] == ("ArtifactError", "inputs.sae: wrong width", False)
    assert rank1["refusals"]["same"] == ("ArtifactError", "inputs.sae: wrong width", False)  # rank 0 prints it
    assert rank1["refusals"]["own"] == ("ArtifactError", "a file only rank 1 lacks", True)  # printed by rank 1
    assert rank0["refusals"]["own"][0] == "SAECeptionError" and "[rank 1]" in rank0["refusals"]["own"][1]
    assert rank0["refusals"]["none"] is None and rank1["refusals"]["none"] is None
