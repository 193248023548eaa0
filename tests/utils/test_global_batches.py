"""Global batches (utils/batching.py), the multi-process helpers of utils/distributed.py and each process's seed
(utils/seeding.py), by hand-computed cases: every process draws the batches one process would, each row is
computed once per epoch over all processes, the share weights make the averaged gradient the batch mean, other
ranks print errors only, and only ranks other than 0 get a stream of their own."""

import logging

import pytest
import torch

from sae_ception.errors import ConfigError
from sae_ception.utils.batching import num_batches, process_shares, shuffled_batches
from sae_ception.utils.distributed import (RankFilter, RankFormatter, check_rows_per_process,
                                           single_process_launch_warning)
from sae_ception.utils.seeding import process_seed, seed_process_stream


def _rows(shares):
    return [share.rows.tolist() for share in shares]


def _weights(shares):
    return [share.weight for share in shares]


def test_an_epoch_is_the_same_global_batches_whatever_the_process():
    first = list(shuffled_batches(10, 4, torch.Generator().manual_seed(3)))
    again = list(shuffled_batches(10, 4, torch.Generator().manual_seed(3)))  # another process, same seed
    assert [len(b) for b in first] == [4, 4, 2] and num_batches(10, 4) == 3
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert sorted(torch.cat(first).tolist()) == list(range(10))  # no row dropped (10 % 3 processes = 1 would have been)


def test_shares_of_an_uneven_batch_are_strided_and_weighted_by_rows():
    batch = torch.tensor([7, 3, 9, 1, 5])
    rank0, rank1 = process_shares(batch, 0, 2), process_shares(batch, 1, 2)
    assert _rows(rank0) == [[7, 9, 5]] and _rows(rank1) == [[3, 1]]
    assert _weights(rank0) == [pytest.approx(3 * 2 / 5)] and _weights(rank1) == [pytest.approx(2 * 2 / 5)]
    assert _rows(process_shares(batch)) == [[7, 3, 9, 1, 5]] and _weights(process_shares(batch)) == [1.0]


def test_micro_batches_are_cut_as_one_process_cuts_them_then_shared():
    batch = torch.arange(10, 16)  # 6 rows, micro-batches of 3: [10 11 12] [13 14 15]
    rank0, rank1 = process_shares(batch, 0, 2, micro_size=3), process_shares(batch, 1, 2, micro_size=3)
    assert _rows(rank0) == [[10, 12], [13, 15]] and _rows(rank1) == [[11], [14]]
    assert _weights(rank0) == pytest.approx([4 / 6, 4 / 6]) and _weights(rank1) == pytest.approx([2 / 6, 2 / 6])
    assert sum(_weights(rank0) + _weights(rank1)) == pytest.approx(2)  # the weights sum to the process count


def test_a_process_without_rows_gets_a_placeholder_of_weight_zero():
    batch = torch.tensor([8, 2])  # the short last batch of an epoch, 3 processes
    shares = [process_shares(batch, rank, 3) for rank in range(3)]
    assert [_rows(s) for s in shares] == [[[8]], [[2]], [[8]]]
    assert [_weights(s) for s in shares] == [[pytest.approx(1.5)], [pytest.approx(1.5)], [0.0]]
    micro = [process_shares(torch.arange(5), rank, 2, micro_size=2) for rank in range(2)]  # [0 1] [2 3] [4]
    assert _rows(micro[1]) == [[1], [3], [4]] and _weights(micro[1]) == pytest.approx([0.4, 0.4, 0.0])
    assert len(micro[0]) == len(micro[1])  # as many shares on every process: the collectives stay matched


@pytest.mark.parametrize("n, batch_size, world, micro", [(23, 8, 2, None), (23, 8, 3, 4), (17, 5, 4, None)])
def test_every_row_once_per_epoch_over_processes_and_weights_sum_to_world(n, batch_size, world, micro):
    per_process = [list(shuffled_batches(n, batch_size, torch.Generator().manual_seed(0))) for _ in range(world)]
    seen = []
    for position, batch in enumerate(per_process[0]):
        shares = [s for rank in range(world) for s in process_shares(per_process[rank][position], rank, world, micro)]
        real = [s for s in shares if s.weight > 0]
        assert sorted(torch.cat([s.rows for s in real]).tolist()) == sorted(batch.tolist())
        assert sum(s.weight for s in shares) == pytest.approx(world)
        seen += torch.cat([s.rows for s in real]).tolist()
    assert sorted(seen) == list(range(n))


def test_shares_refuse_what_cannot_be_split():
    with pytest.raises(ValueError, match="non-empty batch"):
        process_shares(torch.tensor([], dtype=torch.long), 0, 2)
    with pytest.raises(ValueError, match="rank 2, world_size 2"):
        process_shares(torch.arange(4), 2, 2)


def test_a_batch_smaller_than_the_process_count_is_refused_in_one_line():
    check_rows_per_process(4, 2, 2, "model.batch_size")  # 2 rows per micro-batch, 2 processes: fine
    with pytest.raises(ConfigError) as info:
        check_rows_per_process(4, 4, 2, "model.batch_size")
    assert str(info.value) == ("model.batch_size=4 / model.gradient_accumulation_steps=4 = 1 rows per micro-batch is "
                               "fewer than the 2 processes: batch sizes are global (split across the processes), so "
                               "each process needs a row; use model.batch_size >= 8 or fewer processes")
    with pytest.raises(ConfigError, match=r"^sae\.batch_size=3 is fewer than the 4 processes"):
        check_rows_per_process(3, 1, 4, "sae.batch_size")


def test_accelerate_launch_that_started_one_of_several_processes_is_recognised():
    simple = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert "torchrun --standalone --nproc_per_node N" in single_process_launch_warning(simple)
    assert single_process_launch_warning({"ACCELERATE_USE_CPU": "True"}) is None  # --num_processes 1
    assert single_process_launch_warning({**simple, "WORLD_SIZE": "2", "RANK": "0"}) is None  # really several
    assert single_process_launch_warning({"MASTER_PORT": "1", "WORLD_SIZE": "2"}) is None  # torchrun


def test_other_ranks_print_only_errors_prefixed_with_their_rank(monkeypatch):
    def record(level):
        return logging.LogRecord("sae_ception", level, __file__, 1, "a line", None, None)

    monkeypatch.setenv("RANK", "1")
    rank_filter, formatter = RankFilter(), RankFormatter("%(levelname)s - %(message)s")
    assert not rank_filter.filter(record(logging.INFO)) and not rank_filter.filter(record(logging.WARNING))
    assert rank_filter.filter(record(logging.ERROR)) and rank_filter.filter(record(logging.CRITICAL))
    assert formatter.format(record(logging.ERROR)) == "[rank 1] ERROR - a line"
    monkeypatch.setenv("RANK", "0")
    rank_filter, formatter = RankFilter(), RankFormatter("%(levelname)s - %(message)s")
    assert rank_filter.filter(record(logging.INFO)) and rank_filter.filter(record(logging.WARNING))
    assert formatter.format(record(logging.INFO)) == "INFO - a line"


def test_each_rank_has_its_own_seed_and_rank_0_keeps_the_stage_seed():
    seeds = [process_seed(1234, rank) for rank in range(4)]
    assert seeds[0] == 1234 and len(set(seeds)) == 4 and all(0 <= s < 2 ** 31 for s in seeds)
    assert process_seed(1234, 1) == process_seed(1234, 1) != process_seed(1235, 1)  # deterministic, per stage
    with pytest.raises(ValueError, match="rank >= 0"):
        process_seed(1234, -1)


@pytest.mark.parametrize("rank, world, keeps", [(0, 1, True), (0, 2, True), (1, 2, False), (3, 4, False)])
def test_only_ranks_other_than_0_of_several_processes_are_reseeded(rank, world, keeps):
    torch.manual_seed(7)
    torch.rand(3)  # a stream already under way (model initialisation)
    state = torch.get_rng_state()
    seed_process_stream(99, rank, world)
    assert torch.equal(torch.get_rng_state(), state) == keeps
    if not keeps:
        assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(process_seed(99, rank))))
