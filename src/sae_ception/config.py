"""Typed configuration: Hydra composes YAML, this module checks it against dataclasses and fails in one line.

Each group's schema lives beside its implementation and is found through that group's registry
(`sae.type`, `sharpening.type`, `model.name`, `dataset.name`), so a new variant needs no change here.
"""

import difflib
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from sae_ception.data import DATASETS, DatasetConfig
from sae_ception.errors import ConfigError
from sae_ception.evaluation.objective_metrics import check_objective, check_search
from sae_ception.models import MODELS, ModelConfig
from sae_ception.sae import SAE_TYPES, SAEConfig
from sae_ception.sharpening import SHARPENERS, SharpeningConfig
from sae_ception.training.auxiliary_loss import AUX_LOSSES

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("no", "fp16", "bf16")
WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class MethodConfig:
    name: str = "sae_ception"

    def __post_init__(self) -> None:
        if self.name != "sae_ception":
            raise ConfigError(f"method.name={self.name!r} is not a known method; valid: sae_ception")


CYCLE_INITS = ("continue", "scratch")


def _aux_weights(value: Any) -> Any:
    """`cycle.aux_loss_weight` checked: a number >= 0, or a non-empty list of distinct numbers >= 0 (kept as given)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    shown = f"cycle.aux_loss_weight={list(values) if isinstance(value, (list, tuple)) else value}"
    if not values:
        raise ConfigError(f"{shown} is empty; give a weight >= 0 (e.g. 0.1) or a non-empty list of them ([0.01,0.1])")
    for weight in values:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{shown}: {weight!r} is not a number; give a weight >= 0 or a list of them")
        if not weight >= 0 or weight == float("inf"):
            raise ConfigError(f"{shown}: {weight} is not valid; auxiliary weights must be finite and >= 0")
    if len(set(map(float, values))) != len(values):
        raise ConfigError(f"{shown} repeats a weight; give each weight once")
    if isinstance(value, (list, tuple)) and len(values) > 1:
        return [float(w) for w in values]
    return float(values[0])  # `[0.1]` is the same setting as `0.1`: stored one way, so resume and compare agree


@dataclass
class CycleConfig:
    """The SAE-ception loop: how many cycles, and how each auxiliary retraining runs."""

    max_cycles: int = 3  # auxiliary retrainings; models 0..max_cycles are each evaluated with their own SAE
    current: int = 0  # which cycle a single-stage script works on (model N, SAE N)
    # lambda in task loss + lambda * aux_loss(activation, target), or a list of them: one model per lambda, the one
    # with the best validation accuracy becomes model N+1 (every candidate's validation and test figures are saved)
    aux_loss_weight: Any = 0.1
    aux_loss: str = "cosine"  # cosine | cosine_centered | mse (training/auxiliary_loss.py)
    init: str = "continue"  # continue: retrain model N (cycle.epochs, cycle.lr, cycle.keep_best);
    #                         scratch: a fresh model from the baseline's seed with the baseline's schedule
    #                         (model.epochs, model.lr, model.keep_best), as the paper's code does
    epochs: int = 10  # epochs of each auxiliary retraining (init=continue)
    lr: Optional[float] = None  # None: model.lr (init=continue)
    keep_best: bool = False  # keep the best-validation-accuracy epoch; False keeps the last, so the
    #                          auxiliary objective is not undone by selecting on task accuracy alone
    trainable: List[str] = field(default_factory=lambda: ["all"])  # ["all"] or parameter-name prefixes

    @property
    def aux_loss_weights(self) -> list[float]:
        """The candidate weights of every auxiliary retraining (one, unless a list was given)."""
        return list(self.aux_loss_weight) if isinstance(self.aux_loss_weight, list) else [self.aux_loss_weight]

    def __post_init__(self) -> None:
        if self.max_cycles < 0:
            raise ConfigError(f"cycle.max_cycles={self.max_cycles} must be >= 0")
        if self.current < 0:
            raise ConfigError(f"cycle.current={self.current} must be >= 0")
        self.aux_loss_weight = _aux_weights(self.aux_loss_weight)
        if self.aux_loss not in AUX_LOSSES:
            raise ConfigError(f"cycle.aux_loss={self.aux_loss!r} is not valid{closest(str(self.aux_loss), list(AUX_LOSSES))}"
                              f"; use one of {', '.join(AUX_LOSSES)}")
        if self.init not in CYCLE_INITS:
            raise ConfigError(f"cycle.init={self.init!r} is not valid; use one of {', '.join(CYCLE_INITS)}")
        if self.init == "scratch" and list(self.trainable) != ["all"]:
            raise ConfigError(f"cycle.trainable={list(self.trainable)} with cycle.init=scratch would leave a freshly "
                              "initialised model partly untrained; use cycle.trainable=[all] or cycle.init=continue")
        if self.epochs < 1:
            raise ConfigError(f"cycle.epochs={self.epochs} must be a positive integer (epochs of each auxiliary "
                              "retraining; cycle.max_cycles=0 runs none)")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"cycle.lr={self.lr} must be > 0 (or null to use model.lr)")
        if not self.trainable:
            raise ConfigError("cycle.trainable is empty; use [all] or a list of parameter-name prefixes")


@dataclass
class InputsConfig:
    """Explicit artifact paths; when unset, a stage takes its inputs from the run folder."""

    model: Optional[str] = None  # a model checkpoint folder: the model of cycle `cycle.current`
    sae: Optional[str] = None  # an SAE checkpoint folder: the SAE of cycle `cycle.current`


@dataclass
class AnalysisConfig:
    """Per-feature reports (scripts/analyze_features.py; at the end of train_cycle.py when enabled)."""

    enabled: bool = False
    num_features: int = 16  # the most often firing SAE features are analysed
    top_k: int = 10  # strongest examples (text: also strongest tokens) kept per feature
    context: int = 8  # text: tokens shown on each side of a top token

    def __post_init__(self) -> None:
        for setting in ("num_features", "top_k"):
            if getattr(self, setting) <= 0:
                raise ConfigError(f"analysis.{setting}={getattr(self, setting)} must be a positive integer")
        if self.context < 0:
            raise ConfigError(f"analysis.context={self.context} must be >= 0 (tokens shown on each side of a top token)")


@dataclass
class EvaluationConfig:
    """Fixed-seed samples of the metrics that cannot stream over every row (evaluation/representations.py,
    METRICS_REFERENCE.md "Bounded memory"); each is the whole split when the split is no larger."""

    probe_rows: int = 50_000  # training rows a linear probe is fitted on (it then scores every held-out row)
    kmeans_rows: int = 50_000  # held-out rows k-means is fitted on (it then assigns every row)
    silhouette_rows: int = 10_000  # held-out rows of the silhouettes
    plot_rows: int = 5_000  # held-out rows drawn in the 2-D PCA plot
    chunk_rows: int = 4096  # rows the streamed metrics read at once (memory: chunk_rows x units)

    def __post_init__(self) -> None:
        for setting in ("probe_rows", "kmeans_rows", "silhouette_rows", "plot_rows", "chunk_rows"):
            value = getattr(self, setting)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"evaluation.{setting}={value} must be a positive integer")

    def sampling(self):
        from sae_ception.evaluation.representations import Sampling

        return Sampling(self.probe_rows, self.kmeans_rows, self.silhouette_rows, self.plot_rows, self.chunk_rows)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline (log locally, `wandb sync` later), online, or disabled
    project: str = "sae-ception"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: inside a --multirun sweep, the sweep's folder (utils/tracking.py), else none
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    # seconds between writes of the rows to the run's .wandb file (wandb's x_transaction_log_flush_interval;
    # 0: only when a 32 KiB block fills or the run ends): a SIGKILL loses at most the rows of this last stretch
    flush_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"wandb.mode={self.mode!r} is not valid; use one of {', '.join(WANDB_MODES)}")
        if not (isinstance(self.flush_seconds, (int, float)) and 0 <= self.flush_seconds < math.inf):
            raise ConfigError(f"wandb.flush_seconds={self.flush_seconds!r} is not valid; use a number of seconds "
                              ">= 0 (0: write only when a block fills or the run ends)")


@dataclass
class PathsConfig:
    output_dir: Optional[str] = None  # this job's folder: run_dir, or the job's folder of a --multirun sweep


@dataclass
class CommonSettings:
    """The scalar settings every script's run has (SAE-ception and concept transfer alike)."""

    seed: int = 0  # fixes data splits, initialisation and data order
    device: str = "auto"  # auto (CUDA when visible), cpu or cuda; several GPUs via `accelerate launch`
    mixed_precision: str = "no"  # no, fp16 (CUDA) or bf16
    resume: bool = True  # rerunning into an existing run folder skips the stages it already finished
    run_dir: str = "outputs"  # the run folder (Hydra's run dir); give an existing one to resume it
    progress: bool = True  # tqdm progress bars
    eval_batch_size: int = 1024
    plots: bool = True  # write PNG plots (and send them to wandb) at the end of a run
    threads: str = "auto"  # CPU threads of this process: auto (CPUs it may use / processes on this machine) or N

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed={self.seed} must be an integer in [0, 2^32)")
        if not str(self.run_dir).strip():
            raise ConfigError("run_dir is empty; give a folder (or leave run_dir out for a new outputs/<date>/<time>)")
        if self.device not in DEVICES:
            raise ConfigError(f"device={self.device!r} is not valid; use one of {', '.join(DEVICES)}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(
                f"mixed_precision={self.mixed_precision!r} is not valid; use one of {', '.join(PRECISIONS)}"
            )
        if self.eval_batch_size <= 0:
            raise ConfigError(f"eval_batch_size={self.eval_batch_size} must be a positive integer")
        if self.threads != "auto" and not (self.threads.isdigit() and int(self.threads) > 0):
            raise ConfigError(f"threads={self.threads!r} is not valid; use auto or a positive integer")


@dataclass
class Settings(CommonSettings):
    """The scalar settings at the top of config.yaml (SAE-ception runs)."""

    eval_cycle: Optional[int] = None  # scripts/evaluate.py: only this cycle (null: every evaluable cycle)
    activation_dtype: str = "float32"  # how cached activations are stored on disk: float32 | float16
    # a metric (`family/name` of the results) that train_cycle.py measures on the VALIDATION split at the last
    # cycle, writes to results/objective.json and returns: what `hydra/sweeper=optuna` optimises (null: none)
    objective: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activation_dtype not in ("float32", "float16"):
            raise ConfigError(f"activation_dtype={self.activation_dtype!r} is not valid; use float32 or float16")
        if self.objective is not None:
            check_objective(self.objective)
        check_search(self.objective)  # inside an Optuna sweep: an objective, in its better direction


@dataclass
class Config(Settings):
    """Everything a run needs, typed; built by `parse_config` from the composed Hydra config."""

    dataset: DatasetConfig = None  # type: ignore[assignment]
    model: ModelConfig = None  # type: ignore[assignment]
    sae: SAEConfig = None  # type: ignore[assignment]
    sharpening: SharpeningConfig = None  # type: ignore[assignment]
    method: MethodConfig = field(default_factory=MethodConfig)
    cycle: CycleConfig = field(default_factory=CycleConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not SAE_TYPES.get(self.sae.type).linear_decoder:
            raise ConfigError(f"sae={self.sae.type} has no linear decoder, so no latent has a decoder direction for "
                              "sharpening and feature reports to read; it is for scripts/transfer_concept.py. Use "
                              "sae=relu, topk, batchtopk, jumprelu or paper_relu here")
        self.sae.validate_for(self.model.target_width())
        self.sharpening.validate_for(self.sae.width(self.model.target_width()))
        if len(self.cycle.aux_loss_weights) > 1 and self.dataset.val_fraction == 0:
            raise ConfigError(f"cycle.aux_loss_weight={self.cycle.aux_loss_weight} is a list chosen on validation "
                              "accuracy, but dataset.val_fraction=0; set it > 0 (e.g. 0.1) or give one weight")
        if self.cycle.init == "scratch" and self.inputs.model:
            raise ConfigError(f"cycle.init=scratch trains a fresh model from the baseline's seed and schedule, which "
                              f"inputs.model={self.inputs.model} did not come from; use cycle.init=continue, or drop "
                              "inputs.model and let the run train its own baseline")
        if self.objective is not None and self.dataset.val_fraction == 0:
            raise ConfigError(f"objective={self.objective} is measured on the validation split, but "
                              "dataset.val_fraction=0; set it > 0 (e.g. 0.1), a search must never select on test data")
        if self.sae.target_l0 is not None and self.dataset.val_fraction == 0:
            raise ConfigError(f"sae.target_l0={self.sae.target_l0} is calibrated on validation data, but "
                              "dataset.val_fraction=0; set it > 0 (e.g. 0.1)")


# group name -> (registry, the key inside the group that selects the variant)
_REGISTERED_GROUPS = {
    "dataset": (DATASETS, "name"),
    "model": (MODELS, "name"),
    "sae": (SAE_TYPES, "type"),
    "sharpening": (SHARPENERS, "type"),
}
_PLAIN_GROUPS = {
    "method": MethodConfig,
    "cycle": CycleConfig,
    "inputs": InputsConfig,
    "analysis": AnalysisConfig,
    "evaluation": EvaluationConfig,
    "wandb": WandbConfig,
    "paths": PathsConfig,
}


def typed_section(group: str, schema: type, values: Any) -> Any:
    """Merge `values` onto `schema` and instantiate it; any type or name error becomes one line."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as ex:
        full_key = getattr(ex, "full_key", None)
        key = ".".join(part for part in (group, full_key) if part) or "config"
        message = str(getattr(ex, "msg", ex)).splitlines()[0]
        if isinstance(ex, ConfigKeyError) and full_key:
            message = unknown_key_message(key, schema, full_key.split("."))
        raise ConfigError(f"{key}: {message}") from None


def closest(name: str, valid: list[str], prefix: str = "") -> str:
    """`; did you mean <prefix>X?` for the valid name X closest to a misspelt one ('' when none is close)."""
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{match[0]}?" if match else ""


def unknown_key_message(key: str, schema: type, path: list[str]) -> str:
    """`not a setting; did you mean sae.lr?` for a key the schema does not have (nested dataclasses followed)."""
    for part in path[:-1]:
        nested = {f.name: f.type for f in fields(schema)}.get(part)
        if not (isinstance(nested, type) and is_dataclass(nested)):
            break
        schema = nested
    valid = [f.name for f in fields(schema)]
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    return f"not a setting{closest(path[-1], valid, prefix)} (valid: {', '.join(valid)})"


def config_container(cfg: DictConfig) -> dict:
    """The composed config as plain, resolved Python values, without Hydra's own node (ConfigError when an
    interpolation cannot be resolved)."""
    if "hydra" in cfg:  # the compose API's return_hydra_config: Hydra's own node is not a setting of the run
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as ex:
        raise ConfigError(str(getattr(ex, "msg", ex)).splitlines()[0]) from None


def registered_section(group: str, registry, key: str, values: Any) -> Any:
    """A group whose `key` (e.g. `name`, `type`) selects a registered class: typed with that class's config."""
    if not isinstance(values, dict) or key not in values:
        raise ConfigError(f"{group}.{key} is missing; valid: {', '.join(registry.names())}")
    return typed_section(group, registry.get(values[key]).config_class, values)


def model_group_section(group: str, values: Any) -> ModelConfig:
    """A model config typed for a script's own model key (`model_a`, `model_b`: `model@model_a=...`); the model
    schema's own messages say `model.`, renamed to the key."""
    try:
        return registered_section(group, MODELS, "name", values)
    except ConfigError as ex:
        raise ConfigError(re.sub(r"(?<![\w.])model\.", f"{group}.", str(ex))) from None


def parse_config(cfg: DictConfig) -> Config:
    """Validate a composed Hydra config and return the typed `Config` (raises ConfigError)."""
    container = config_container(cfg)
    groups: dict[str, Any] = {}
    for group, (registry, key) in _REGISTERED_GROUPS.items():
        groups[group] = registered_section(group, registry, key, container.pop(group, None))
    for group, schema in _PLAIN_GROUPS.items():
        groups[group] = typed_section(group, schema, container.pop(group, None) or {})
    settings = typed_section("", Settings, container)
    try:
        return Config(**groups, **vars(settings))
    except TypeError as ex:  # pragma: no cover - a programming error in the schema
        raise ConfigError(str(ex)) from None

