"""The run folder: where each artifact lives, whether a rerun may resume it, and shared per-run state."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import yaml
from accelerate import Accelerator

from sae_ception.config import Config, EvaluationConfig
from sae_ception.config_file import read_run_config
from sae_ception.data import DataSplits, load_splits
from sae_ception.errors import ConfigError
from sae_ception.models import MODELS
from sae_ception.utils.io import check_checkpoint, checkpoint_exists, write_text
from sae_ception.utils.seeding import stage_seed
from sae_ception.utils.tracking import Tracker

log = logging.getLogger(__name__)

# Settings that may change between invocations on one run folder without invalidating what it holds.
RESUME_NEUTRAL = {
    ("resume",), ("run_dir",), ("paths",), ("wandb",), ("progress",), ("device",),
    ("eval_batch_size",), ("eval_cycle",), ("plots",), ("inputs",), ("analysis",), ("cycle", "max_cycles"), ("cycle", "current"),
    ("threads",), ("objective",), ("evaluation", "chunk_rows"),  # memory only: no number depends on it
    # concept transfer: which methods run, and their settings (each method's result records its own settings and
    # is recomputed when they change; models A and B do not depend on them)
    ("concept", "methods"), ("concept", "save_edited"), ("concept", "target_images"), ("transfer",),
}

# Config sections added after run folders without them were made. Such a run resumes as if it had the section's
# defaults: `evaluation` (the metric samples) reads every row of splits up to 50,000 rows, as every run did before.
SECTIONS_ADDED_LATER = {"evaluation": EvaluationConfig}


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def model(self, cycle: int) -> Path:
        return self.root / "checkpoints" / f"model_cycle_{cycle}"

    def sae(self, cycle: int) -> Path:
        return self.root / "checkpoints" / f"sae_cycle_{cycle}"

    def activations(self, cycle: int) -> Path:
        """A folder of memory-mapped .npy arrays (see activations.py)."""
        return self.root / "activations" / f"cycle_{cycle}"

    def results(self, cycle: int) -> Path:
        return self.root / "results" / f"cycle_{cycle}.json"

    def auxiliary_record(self, cycle: int) -> Path:
        """How model N+1 was made from cycle N: every candidate lambda's figures, the one chosen, the budget."""
        return self.root / "results" / f"auxiliary_cycle_{cycle}.json"

    def aux_candidate(self, cycle: int, index: int) -> Path:
        """Candidate `index` of cycle N's auxiliary retraining (a list of lambdas); removed once model N+1 is chosen."""
        return self.root / "checkpoints" / f"candidates_cycle_{cycle}" / f"lambda_{index}"

    def feature_report(self, cycle: int) -> Path:
        return self.root / "analysis" / f"cycle_{cycle}" / "feature_report.json"

    def feature_gallery(self, cycle: int) -> Path:
        """The feature report as a self-contained HTML page, one card per feature."""
        return self.root / "analysis" / f"cycle_{cycle}" / "index.html"

    def codes(self, cycle: int, split: str) -> Path:
        """SAE N's codes of model N's `split` rows, stored sparse (evaluation/rows.py): written by evaluation,
        read by the feature report; rebuilt when the SAE or the activations changed since."""
        return self.root / "codes" / f"cycle_{cycle}" / split

    def unit_scores(self, cycle: int) -> Path:
        """Per-unit CSI/U and 2-D PCA of the test codes, for plots."""
        return self.root / "results" / f"units_cycle_{cycle}.safetensors"

    def plots(self) -> Path:
        return self.root / "plots"

    # --- concept transfer (scripts/transfer_concept.py) ---------------------------------------------------
    def source_model(self, which: str) -> Path:
        """Model A or B of a concept-transfer run (`which`: "a" or "b"), trained once, shared by every method."""
        return self.root / "checkpoints" / f"model_{which}"

    def edited_model(self, method: str) -> Path:
        """The copy of A a transfer method made."""
        return self.root / "checkpoints" / f"edited_{method}"

    def concept_sae(self, which: str) -> Path:
        """Model A's or B's SAE on its penultimate features (transfer/concepts.py), shared by the SAE-based methods."""
        return self.root / "checkpoints" / f"sae_{which}"

    def method_result(self, method: str) -> Path:
        """One transfer method's measures, budget and settings (written when it finishes: resume skips it)."""
        return self.root / "results" / "methods" / f"{method}.json"

    def transfer_results(self) -> Path:
        """Every method's results of a concept-transfer run, with models A and B's own figures."""
        return self.root / "results" / "transfer.json"

    def model_cycles(self) -> list[int]:
        found = self.root.glob("checkpoints/model_cycle_*")
        return sorted(int(p.name.rsplit("_", 1)[1]) for p in found if checkpoint_exists(p))

    def has_artifacts(self) -> bool:
        return any((self.root / sub).exists() for sub in ("checkpoints", "activations", "results"))


def resume_neutral(cfg, setting: str) -> bool:
    """Whether a resume of a run of `cfg`'s type may change `setting` (dotted, e.g. "sae.lr"): it or a section
    holding it is in RESUME_NEUTRAL or the config type's own RESUME_NEUTRAL."""
    parts = tuple(setting.strip().split("."))
    neutral = RESUME_NEUTRAL | set(getattr(cfg, "RESUME_NEUTRAL", ()))
    return any(parts[:n] in neutral for n in range(1, len(parts) + 1))


def without_neutral(tree: dict, prefix: tuple = (), neutral: frozenset = frozenset()) -> dict:
    """`tree` without the settings a resume may change (RESUME_NEUTRAL, and the config's own `neutral`)."""
    out = {}
    for key, value in tree.items():
        path = (*prefix, key)
        if path in RESUME_NEUTRAL or path in neutral:
            continue
        out[key] = without_neutral(value, path, neutral) if isinstance(value, dict) else value
    return out


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(old) | set(new), key=str):
            diffs += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return diffs
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_resumable(layout: RunLayout, cfg: Config) -> None:
    """Refuse to mix artifacts made under other settings; never touch a folder we would not resume."""
    if not layout.has_artifacts():
        return
    if not cfg.resume:
        raise ConfigError(
            f"resume=false but {layout.root} already holds a run; use resume=true to continue it, or a new run_dir"
        )
    if not layout.config.is_file():
        raise ConfigError(f"{layout.root} holds artifacts but no config.yaml; use a new run_dir")
    neutral = frozenset(getattr(cfg, "RESUME_NEUTRAL", ()))  # a config type's own (e.g. a transfer run's SAEs)
    saved = read_run_config(layout.config)
    for section, default in SECTIONS_ADDED_LATER.items():  # a run made before a section existed ran with its defaults
        if section in asdict(cfg) and section not in saved:
            saved[section] = asdict(default())
    old = without_neutral(saved, neutral=neutral)
    new = without_neutral(asdict(cfg), neutral=neutral)
    diffs = differences(old, new)
    if diffs:
        raise ConfigError(
            f"run_dir {layout.root} was made with other settings ({'; '.join(diffs[:3])}); "
            "rerun with the same settings to resume, or use a new run_dir"
        )


def _recompute_advice(layout: RunLayout, folder: Path) -> str:
    """How to have a damaged checkpoint rewritten: what else to delete with it, then rerun the same command."""
    name = folder.name
    if name.startswith("edited_"):  # a transfer method's edited model: its result must go too, or it is reused
        also = f" and {layout.method_result(name[len('edited_'):])}"
    elif name in ("model_a", "model_b"):  # every transfer method's result was measured on edits of A (or used B)
        also = f" and {layout.root / 'results' / 'methods'}"
    elif name in ("sae_a", "sae_b"):  # a transfer run's SAE: retrained, and the SAE methods recomputed, on rerun
        also = " (the SAE-based methods' results are recomputed with the new one)"
    else:
        also = " (and the artifacts of later cycles)"
    return f"delete {folder}{also} and rerun the same command to recompute it"


def check_artifacts(layout: RunLayout) -> None:
    """Every checkpoint the run folder holds is readable (config.json parses, the weights file is whole), so a
    damaged one stops a resumed run before any training, naming it, instead of failing stages later."""
    for folder in sorted(layout.root.glob("checkpoints/*")):
        if checkpoint_exists(folder):
            check_checkpoint(folder, _recompute_advice(layout, folder))


class RunContext:
    """What every stage of one run shares: typed config, folder layout, accelerator, tracker and data."""

    def __init__(self, cfg: Config, accelerator: Accelerator, tracker: Optional[Tracker] = None):
        self.cfg = cfg
        self.layout = RunLayout(Path(cfg.paths.output_dir))
        self.accelerator = accelerator
        self.tracker = tracker
        self.activation_cache: dict[int, Any] = {}
        self.timings: list[dict] = []  # seconds per stage and cycle in this invocation (nested stages excluded)
        self._timer_stack: list[list[float]] = []

    def use_folder(self, root: Path) -> None:
        """Work in `root` (the folder this process claimed), recorded in the config as the job's folder."""
        self.cfg.paths.output_dir = str(root)
        self.layout = RunLayout(Path(root))

    @contextlib.contextmanager
    def timed(self, stage: str, cycle: int) -> Iterator[None]:
        """Record the wall-clock seconds of a stage, minus those of stages timed inside it."""
        started = time.perf_counter()
        self._timer_stack.append([0.0])
        try:
            yield
        finally:
            inner = self._timer_stack.pop()[0]
            seconds = time.perf_counter() - started
            if self._timer_stack:
                self._timer_stack[-1][0] += seconds
            self.timings.append({"stage": stage, "cycle": cycle, "seconds": round(seconds - inner, 3)})

    @cached_property
    def splits(self) -> DataSplits:
        """The dataset's splits as this model's inputs (text is tokenised once and cached in the run folder)."""
        splits = load_splits(self.cfg.dataset, seed=stage_seed(self.cfg.seed, 0, "data"))
        return MODELS.get(self.cfg.model.name).prepare_splits(
            self.cfg.model, self.cfg.dataset, splits, cache_dir=self.layout.root / "cache",
            write_cache=self.accelerator.is_main_process,
        )

    def seed_for(self, cycle: int, stage: str) -> int:
        return stage_seed(self.cfg.seed, cycle, stage)

    def log_fn(self, stage: str, step_offset: int = 0) -> Callable[[dict, int], None]:
        def log(metrics: dict, step: int) -> None:
            if self.tracker is not None:
                self.tracker.log_step(stage, metrics, step_offset + step)

        return log

    def save_config(self) -> None:
        """Write the resolved config; an unchanged one is left as it is (no needless rewrite)."""
        text = yaml.safe_dump(asdict(self.cfg), sort_keys=False)
        if not self.layout.config.is_file() or self.layout.config.read_text() != text:
            write_text(self.layout.config, text)

    def remove_stale_temporaries(self) -> None:
        """Delete what a killed writer left behind (`.name.*.tmp`, `.name.old`); finished artifacts never match."""
        folders = [self.layout.root] + [self.layout.root / sub for sub in ("checkpoints", "activations", "results", "cache")]
        folders += sorted((self.layout.root / "codes").glob("cycle_*"))  # code stores: codes/cycle_N/<split>
        for path in (p for folder in folders for pattern in (".*.tmp", ".*.old") for p in folder.glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
