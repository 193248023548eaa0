"""Where each side's model comes from (`align.model_a`, `align.model_b`), resolved before anything is written.

A source is one of:
- `preset`: the `model@model_<side>` group. An MLP is trained here on the training split (its own seed); a
  transformer is read with its pretrained weights (`model.pretrained`: hub id, folder or package; its head is
  untrained, so it has no downstream accuracy);
- a run folder of scripts/train_cycle.py (config.yaml, checkpoints/model_cycle_N): the model of `align.cycle_<side>`
  (null: its last), built from the run's own model settings; its dataset must be this run's (mismatched data
  would pair unrelated rows). With `align.sae_from_run` its SAE of that cycle is used too;
- a model checkpoint folder (config.json + weights.safetensors, e.g. <run>/checkpoints/model_cycle_2): read on
  whatever data this run reads, provided its input fits.

`align.layer_<side>` picks the block read (null: the model's own target_layer).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from sae_ception.config import registered_section
from sae_ception.config_file import read_run_config
from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.models import MODELS, Classifier, ModelConfig, build_model, load_model
from sae_ception.models.checkpoint import config_from_checkpoint
from sae_ception.run import RunLayout
from sae_ception.utils.io import META_FILE, checkpoint_exists, read_json, user_path

KINDS = ("preset", "run", "checkpoint")

log = logging.getLogger(__name__)
# dataset settings that only subsample a held-out split the data provides (never training rows)
HELD_OUT_ONLY = {"max_test_examples"}


@dataclass
class ModelSource:
    """One side's model: what it is, which block is read, and where its weights come from."""

    side: str  # "a" | "b"
    kind: str  # preset | run | checkpoint
    model_cfg: ModelConfig  # its settings, with target_layer = the block read (align.layer_<side>)
    checkpoint: Optional[Path] = None  # weights to load (run / checkpoint); None: preset
    cycle: Optional[int] = None  # a run folder's cycle
    run: Optional[Path] = None  # the run folder (kind run)
    run_seed: Optional[int] = None
    input_dim: Optional[int] = None  # what a checkpoint's MLP reads (checked against the data)
    split_differences: tuple = ()  # a run folder: how its data split differs from this run's (empty: the same)
    num_classes: Optional[int] = None  # a checkpoint's head outputs

    @property
    def trained_here(self) -> bool:
        """A preset MLP has no weights anywhere: this run trains it (checkpoints/model_<side>)."""
        return self.kind == "preset" and self.model_cfg.name == "mlp"

    @property
    def has_trained_head(self) -> bool:
        """Its head was trained for the dataset's classes (downstream accuracy means something)."""
        return self.kind != "preset" or self.trained_here

    @property
    def layer(self) -> int:
        return self.model_cfg.target_layer

    def describe(self) -> dict:
        return {"kind": self.kind, "model": self.model_cfg.name,
                "pretrained": getattr(self.model_cfg, "pretrained", None),
                "path": None if self.checkpoint is None else str(self.checkpoint), "cycle": self.cycle,
                "layer": self.layer}

    def sae_checkpoint(self) -> Optional[Path]:
        """The run's SAE of this cycle (kind run), else None."""
        return None if self.run is None else RunLayout(self.run).sae(self.cycle)


def block_total(model_cfg: ModelConfig) -> int:
    """How many blocks the model has (an MLP's hidden layers; a transformer's, from its config only)."""
    if model_cfg.name == "mlp":
        return len(model_cfg.hidden_sizes)
    from sae_ception.models.blocks import block_count
    from sae_ception.models.pretrained import load_hf_config

    return block_count(load_hf_config(model_cfg.pretrained))


def _at_layer(model_cfg: ModelConfig, layer: Optional[int], side: str, what: str) -> ModelConfig:
    """`model_cfg` reading block `layer` (None: its own target_layer); a layer outside the model is one line."""
    n = block_total(model_cfg)
    chosen = model_cfg.target_layer if layer is None else layer
    if not -n <= chosen < n:
        setting = f"align.layer_{side}" if layer is not None else f"{what}'s target_layer"
        raise ConfigError(f"{setting}={chosen} is outside {what}'s {n} blocks; use {-n}..{n - 1}")
    return replace(model_cfg, target_layer=chosen % n)  # stored non-negative: one name per block


def split_differences(saved: dict, cfg) -> list[str]:
    """How a run's data split differs from this run's (`dataset.<key>=theirs` per dataset setting, and the seed);
    empty when its training rows are this run's training rows, so nothing it was fit on is a test row here."""
    ours, theirs = asdict(cfg.dataset), dict(saved.get("dataset") or {})
    for key in ("path",):
        ours[key], theirs[key] = (None if d.get(key) is None else os.path.realpath(user_path(d[key]))
                                  for d in (ours, theirs))
    keys = sorted((set(ours) | set(theirs)) - HELD_OUT_ONLY)
    diffs = [f"dataset.{k}={theirs.get(k)}" for k in keys if ours.get(k) != theirs.get(k)]
    return diffs + ([f"seed={saved.get('seed')}"] if saved.get("seed") != cfg.seed else [])


def _same_data(run_dataset: dict, dataset) -> bool:
    """A run's dataset section reads the same data as `dataset` (name, source folder, classes)."""
    ours = asdict(dataset)
    if run_dataset.get("name") != ours["name"] or run_dataset.get("num_classes") != ours["num_classes"]:
        return False
    paths = [run_dataset.get("path"), ours["path"]]
    return len({None if p is None else os.path.realpath(user_path(p)) for p in paths}) == 1


def _run_source(side: str, folder: Path, cfg) -> ModelSource:
    given, layout = getattr(cfg.align, f"model_{side}"), RunLayout(folder)
    saved = read_run_config(layout.config, f"align.model_{side}={given} needs it to rebuild the run's model")
    if "model" not in saved or "dataset" not in saved:
        raise ConfigError(f"align.model_{side}={given}: {layout.config} is not a scripts/train_cycle.py run (no model "
                          "or dataset section); give that run's checkpoint folder (checkpoints/model_cycle_N) instead")
    cycles = layout.model_cycles()
    if not cycles:
        raise ConfigError(f"align.model_{side}={given}: the run holds no model checkpoint (checkpoints/model_cycle_N); "
                          "finish it first, or give another run")
    cycle = getattr(cfg.align, f"cycle_{side}")
    if cycle is None:
        cycle = cycles[-1]
    elif cycle not in cycles:
        raise ConfigError(f"align.cycle_{side}={cycle}: run {given} holds the models of cycles "
                          f"{', '.join(map(str, cycles))}")
    if not _same_data(saved["dataset"], cfg.dataset):
        theirs = saved["dataset"]
        raise ConfigError(f"align.model_{side}={given} was trained on dataset={theirs.get('name')} (path "
                          f"{theirs.get('path')}), but this alignment reads dataset={cfg.dataset.name} (path "
                          f"{cfg.dataset.path}); give dataset={theirs.get('name')} dataset.path={theirs.get('path')}, "
                          f"or its checkpoint folder ({layout.model(cycle)}) to read that model on other data")
    try:
        model_cfg = registered_section("model", MODELS, "name", saved["model"])
    except ConfigError as ex:
        raise ArtifactError(f"align.model_{side}={given}: {layout.config} holds model settings this version cannot "
                            f"read ({ex})") from None
    model_cfg = _at_layer(model_cfg, getattr(cfg.align, f"layer_{side}"), side, f"model {side.upper()}")
    source = ModelSource(side, "run", model_cfg, checkpoint=layout.model(cycle), cycle=cycle, run=folder,
                         run_seed=saved.get("seed"))
    source.split_differences = split_differences(saved, cfg)
    if source.split_differences and not cfg.align.sae_from_run:
        log.warning("align.model_%s=%s split the data otherwise (its %s): its model may have trained on some of this "
                    "run's test rows; give those settings to read it on its own held-out rows", side, given,
                    ", ".join(source.split_differences))
    return source


def _checkpoint_source(side: str, folder: Path, cfg) -> ModelSource:
    given = getattr(cfg.align, f"model_{side}")
    meta = read_json(folder / META_FILE, f"restore it, or give align.model_{side} another model")
    if meta.get("kind") != "model":
        raise ConfigError(f"align.model_{side}={given} holds a {meta.get('kind', 'unknown')} checkpoint, not a model; "
                          "give a model checkpoint folder (checkpoints/model_cycle_N) or a run folder")
    try:
        model_cfg = config_from_checkpoint(folder)
    except Exception as ex:  # an unknown model name or settings this version cannot read
        raise ArtifactError(f"align.model_{side}={given}: {folder / META_FILE} does not describe a model this "
                            f"version can build ({' '.join(str(ex).split())[:160]})") from None
    model_cfg = _at_layer(model_cfg, getattr(cfg.align, f"layer_{side}"), side, f"model {side.upper()}")
    return ModelSource(side, "checkpoint", model_cfg, checkpoint=folder, input_dim=meta.get("input_dim"),
                       num_classes=meta.get("num_classes"))


def _is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


def resolve_source(side: str, cfg) -> ModelSource:
    """What `align.model_<side>` names (ConfigError, one line, when it names nothing usable)."""
    given = str(getattr(cfg.align, f"model_{side}")).strip()
    if given == "preset" or not _is_run(user_path(given)):
        cycle = getattr(cfg.align, f"cycle_{side}")
        if cycle is not None:
            raise ConfigError(f"align.cycle_{side}={cycle} picks a cycle of a run folder, but align.model_{side}={given} "
                              f"is not one; drop align.cycle_{side}, or give a run folder")
    if given == "preset":
        preset = getattr(cfg, f"model_{side}")
        model_cfg = _at_layer(preset, getattr(cfg.align, f"layer_{side}"), side, f"model_{side}")
        return ModelSource(side, "preset", model_cfg)
    folder = user_path(given)
    if not folder.exists():
        raise ConfigError(f"align.model_{side}={given}: no such folder; give preset (the model@model_{side} group), "
                          "a run folder of scripts/train_cycle.py, or a model checkpoint folder")
    if _is_run(folder):
        return _run_source(side, folder, cfg)
    if checkpoint_exists(folder):
        return _checkpoint_source(side, folder, cfg)
    raise ConfigError(f"align.model_{side}={given} is neither a run folder (config.yaml and checkpoints/) nor a model "
                      "checkpoint folder (config.json and weights.safetensors)")


def resolve_sources(cfg) -> dict[str, ModelSource]:
    """Both sides' sources, with the checks that need no data: the layer exists, the SAE fits its width, a
    word-level alignment reads two transformers, and `align.sae_from_run` has what it needs."""
    from sae_ception.data.text import TextDatasetConfig

    sources = {side: resolve_source(side, cfg) for side in ("a", "b")}
    if cfg.align.sae_from_run and not any(s.kind == "run" for s in sources.values()):
        raise ConfigError("align.sae_from_run=true takes a run folder's SAE, but neither align.model_a nor "
                          "align.model_b is a run folder; drop it, or give a run folder")
    text = isinstance(cfg.dataset, TextDatasetConfig)
    for side, source in sources.items():
        if (source.model_cfg.name == "transformer") != text:
            where = f"model@model_{side}" if source.kind == "preset" else f"align.model_{side}"
            raise ConfigError(f"{where}: model {side.upper()} is {'a transformer' if not text else 'an MLP'}, which "
                              f"reads {'text' if not text else 'feature vectors'}, but dataset={cfg.dataset.name} holds "
                              f"{'text' if text else 'feature vectors'}; both models must read this dataset")
        width = source.model_cfg.target_width()
        try:
            cfg.sae.validate_for(width)
        except ConfigError as ex:
            raise ConfigError(f"{ex} (for model {side.upper()}'s {width}-wide layer {source.layer})") from None
        if cfg.align.level == "word" and source.model_cfg.name != "transformer":
            raise ConfigError(f"align.level=word pairs text tokens through their characters, but model {side.upper()} "
                              f"is an {source.model_cfg.name}; use align.level=example")
        if cfg.align.sae_from_run:
            _check_run_sae(source, cfg)
    return sources


def _check_run_sae(source: ModelSource, cfg) -> None:
    """`align.sae_from_run`: a run source's SAE must read this side's rows, trained on this run's training split."""
    side = source.side
    if source.kind != "run":
        return  # only run folders hold an SAE of a cycle; other sources' SAEs are trained here
    if cfg.align.level != "example":
        raise ConfigError("align.sae_from_run=true: a run's SAE reads one row per example; use align.level=example "
                          "or align.sae_from_run=false")
    if source.run_seed != cfg.seed:
        raise ConfigError(f"align.sae_from_run=true: run {source.run} split the data with seed={source.run_seed}, this "
                          f"alignment with seed={cfg.seed}, so its SAE was fit on other examples in another order "
                          f"(some of this run's test rows among them); set seed={source.run_seed}, or "
                          "align.sae_from_run=false to train the SAEs here")
    if source.split_differences:
        raise ConfigError(f"align.sae_from_run=true: run {source.run} split the data otherwise (its "
                          f"{', '.join(source.split_differences)}), so its SAE was fit on some of this run's test rows; "
                          "give those settings, or align.sae_from_run=false")
    path = source.sae_checkpoint()
    if not checkpoint_exists(path):
        raise ConfigError(f"align.sae_from_run=true: run {source.run} holds no SAE of cycle {source.cycle} ({path}); "
                          "set align.sae_from_run=false to train one here")
    saved = read_run_config(source.run / "config.yaml")
    run_layer = (saved.get("model") or {}).get("target_layer")
    total = block_total(source.model_cfg)
    if run_layer is None or run_layer % total != source.layer:
        raise ConfigError(f"align.sae_from_run=true: run {source.run}'s SAE reads layer {run_layer}, but align.layer_"
                          f"{side} reads layer {source.layer}; drop align.layer_{side} or set align.sae_from_run=false")


def build_source_model(source: ModelSource, input_dim: int, num_classes: int) -> Classifier:
    """The side's model with its weights (a checkpoint's, or pretrained ones; a preset MLP comes back untrained),
    on the CPU, in eval mode. ArtifactError, one line, when a checkpoint does not fit its settings."""
    if source.checkpoint is None:
        return build_model(source.model_cfg, input_dim=input_dim, num_classes=num_classes).eval()
    model = build_model(source.model_cfg, input_dim=source.input_dim if source.input_dim is not None else input_dim,
                        num_classes=source.num_classes or num_classes, pretrained_weights=False)
    load_model(source.checkpoint, model, f"align.model_{source.side}")
    return model.eval()


def check_fits_data(source: ModelSource, splits) -> None:
    """A checkpoint's model reads this data: an MLP's input width and the head's classes (ConfigError otherwise)."""
    side = source.side
    if source.kind == "checkpoint":
        if source.model_cfg.name == "mlp" and source.input_dim != splits.input_dim:
            raise ConfigError(f"align.model_{side}={source.checkpoint} reads {source.input_dim} features per example, "
                              f"but dataset rows have {splits.input_dim}: it was made for another dataset; give the "
                              "dataset it was trained on")
        if source.num_classes != splits.num_classes:
            raise ConfigError(f"align.model_{side}={source.checkpoint} has {source.num_classes} outputs, but the dataset "
                              f"has {splits.num_classes} classes: it was made for another dataset; give the dataset it "
                              "was trained on")
