"""Typed settings of a feature-alignment run (`scripts/align_features.py`, configs/align_features.yaml).

Two models (`align.model_a`, `align.model_b`: `preset`, a run folder or a model checkpoint folder; sources.py) read
one dataset; each side's activations at its layer get an SAE; every mapping of `align.mappings` (a key of
`mapping`, one YAML per mapping in configs/mapping/, whose `type` selects the registered class) is fit from one
side onto the other, and the run measures it beside controls on held-out data.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import DictConfig

from sae_ception.config import (CommonSettings, PathsConfig, WandbConfig, closest, config_container,
                                model_group_section, registered_section, typed_section)
from sae_ception.data import DATASETS, DatasetConfig
from sae_ception.errors import ConfigError
from sae_ception.models import ModelConfig
from sae_ception.registry import Registry
from sae_ception.sae import SAE_TYPES, SAEConfig

MAPPINGS: Registry = Registry("mapping", "mapping.<name>.type")

SPACES = ("activations", "codes")  # what a mapping maps: the models' activations, or their SAEs' codes
DIRECTIONS = ("a_to_b", "b_to_a")
LEVELS = ("example", "word")  # example: one row per image or text (pooled); word: text, paired through characters
PRESET = "preset"
CONTROLS = ("mean", "identity", "target_sae")  # the table's control rows: names no mapping may take  # align.model_<side>: the model@model_<side> group (MLP trained here; transformer: pretrained)


@dataclass
class MappingConfig:
    """Settings every mapping has; a mapping's own class extends it (one YAML per mapping)."""

    type: str = "procrustes"  # the registered mapping class (alignment/mappings/)
    spaces: List[str] = field(default_factory=lambda: list(SPACES))  # where it is fit: activations and/or codes

    supported_spaces: ClassVar[tuple] = SPACES

    def validate_widths(self, name: str, width_a: int, width_b: int) -> None:
        """Refuse settings that do not fit the two models' widths (checked once the sources are known)."""

    def validate_for(self, name: str, cfg: "AlignConfig") -> None:
        """Refuse, in one ConfigError line naming `mapping.<name>.<setting>`, settings that cannot work here."""
        if not self.spaces:
            raise ConfigError(f"mapping.{name}.spaces is empty; give one or more of {', '.join(self.supported_spaces)}")
        for space in self.spaces:
            if space not in self.supported_spaces:
                raise ConfigError(f"mapping.{name}.spaces: {space!r} is not valid for a {self.type} mapping; use "
                                  f"{' or '.join(self.supported_spaces)}")
        if len(set(self.spaces)) != len(self.spaces):
            raise ConfigError(f"mapping.{name}.spaces={list(self.spaces)} repeats a space; give each once")


@dataclass
class AlignSettings:
    """Which two models, which layer of each, what a row is, and what is compared."""

    model_a: str = PRESET  # preset (model@model_a) | a run folder (its cycle: cycle_a) | a model checkpoint folder
    model_b: str = PRESET
    cycle_a: Optional[int] = None  # a run folder's cycle (null: its last model)
    cycle_b: Optional[int] = None
    layer_a: Optional[int] = None  # block index read (null: the model's own target_layer); negative counts from the end
    layer_b: Optional[int] = None
    level: str = "example"  # example: one row per image/text (the model's pooling) | word: text, tokens paired by characters
    sae_from_run: bool = False  # a run-folder source: use its SAE of that cycle instead of training one here
    mappings: List[str] = field(default_factory=lambda: ["procrustes"])  # keys of `mapping`, in order
    directions: List[str] = field(default_factory=lambda: list(DIRECTIONS))
    thresholds: List[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])  # correlation counts reported
    ceiling: bool = True  # a second SAE per side (another seed, same activations): the same-model ceiling
    downstream: bool = True  # splice mapped activations into the target model and measure its accuracy change
    gallery_pairs: int = 8  # matched feature pairs shown in analysis/pairs.html (0: no gallery)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"align.level={self.level!r} is not valid; use one of {', '.join(LEVELS)}")
        for side in ("a", "b"):
            value = getattr(self, f"model_{side}")
            if not str(value).strip():
                raise ConfigError(f"align.model_{side} is empty; give preset, a run folder or a model checkpoint folder")
            cycle = getattr(self, f"cycle_{side}")
            if cycle is not None and cycle < 0:
                raise ConfigError(f"align.cycle_{side}={cycle} must be >= 0 (or null for the run's last model)")
        if not self.mappings:
            raise ConfigError("align.mappings is empty; give one or more of the configured mappings (configs/mapping/: "
                              "procrustes, affine, mlp, crosscoder_l1, crosscoder_batchtopk)")
        if len(set(self.mappings)) != len(self.mappings):
            raise ConfigError(f"align.mappings={list(self.mappings)} repeats a mapping; give each once")
        if not self.directions or any(d not in DIRECTIONS for d in self.directions):
            raise ConfigError(f"align.directions={list(self.directions)} is not valid; give one or both of "
                              f"{', '.join(DIRECTIONS)}")
        if len(set(self.directions)) != len(self.directions):
            raise ConfigError(f"align.directions={list(self.directions)} repeats a direction; give each once")
        if not self.thresholds or any(not -1 < t < 1 for t in self.thresholds):
            raise ConfigError(f"align.thresholds={list(self.thresholds)} must be correlations in (-1, 1), e.g. "
                              "[0.3,0.5,0.7]")
        if self.gallery_pairs < 0:
            raise ConfigError(f"align.gallery_pairs={self.gallery_pairs} must be >= 0 (0: no gallery)")


@dataclass
class AlignConfig(CommonSettings):
    """Everything a feature-alignment run needs, typed; built by `parse_align_config`. `sources` (not a setting:
    what align.model_a/b resolved to, sources.py) is attached by the parser."""

    dataset: DatasetConfig = None  # type: ignore[assignment]
    model_a: ModelConfig = None  # type: ignore[assignment]  # the preset of align.model_a=preset
    model_b: ModelConfig = None  # type: ignore[assignment]
    sae: SAEConfig = None  # type: ignore[assignment]  # each side's SAE (trained here unless align.sae_from_run)
    mapping: Dict[str, Any] = field(default_factory=dict)  # mapping name -> its MappingConfig
    align: AlignSettings = field(default_factory=AlignSettings)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    # a resume may change these: each mapping's result records its settings and is recomputed when they change;
    # the models, activations and SAEs do not depend on them
    RESUME_NEUTRAL: ClassVar[tuple] = (("mapping",), ("align", "mappings"), ("align", "directions"),
                                       ("align", "thresholds"), ("align", "downstream"), ("align", "gallery_pairs"),
                                       ("align", "ceiling"))

    @property
    def model(self) -> ModelConfig:
        """The model whose input format `RunContext.splits` prepares (side A's; side B's is prepared apart)."""
        sources = getattr(self, "sources", None)
        return sources["a"].model_cfg if sources else self.model_a

    def mappings(self) -> list[tuple[str, MappingConfig]]:
        """(name, settings) of every mapping to fit, in `align.mappings` order."""
        return [(name, self.mapping[name]) for name in self.align.mappings]

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.align.mappings:
            if name in self.mapping:
                continue
            if name in MAPPINGS:
                raise ConfigError(f"align.mappings: {name!r} is a mapping type, not a configured mapping; give one of "
                                  f"{', '.join(self.mapping)} (configs/mapping/<name>.yaml: type {name}), or add a "
                                  f"YAML for it")
            raise ConfigError(f"align.mappings: {name!r} is not a configured mapping{closest(name, list(self.mapping))}"
                              f" (valid: {', '.join(self.mapping)})")
        for name, settings in self.mapping.items():  # every configured mapping: a typo fails now, not when chosen
            if name in CONTROLS:
                raise ConfigError(f"mapping.{name}: {name!r} names one of the table's control rows "
                                  f"({', '.join(CONTROLS)}); give the mapping another name")
            settings.validate_for(name, self)


def parse_align_config(cfg: DictConfig) -> AlignConfig:
    """Validate a composed configs/align_features.yaml, resolve both model sources (reading a run folder's
    config.yaml or a checkpoint's config.json; nothing is written), and return the typed `AlignConfig`."""
    importlib.import_module("sae_ception.alignment.mappings")  # registers every mapping
    from sae_ception.alignment.sources import resolve_sources

    container = config_container(cfg)
    dataset = registered_section("dataset", DATASETS, "name", container.pop("dataset", None))
    sae = registered_section("sae", SAE_TYPES, "type", container.pop("sae", None))
    if not SAE_TYPES.get(sae.type).linear_decoder:
        raise ConfigError(f"sae={sae.type} has no linear decoder, so its latents are not features with directions; "
                          "use sae=relu, topk, batchtopk, jumprelu or paper_relu here")
    models = {group: model_group_section(group, container.pop(group, None)) for group in ("model_a", "model_b")}
    mappings = {}
    for name, values in (container.pop("mapping", None) or {}).items():
        try:
            mappings[name] = registered_section(f"mapping.{name}", MAPPINGS, "type", values)
        except ConfigError as ex:
            raise ConfigError(str(ex).replace("mapping.<name>.", f"mapping.{name}.")) from None
    sections = {group: typed_section(group, schema, container.pop(group, None) or {})
                for group, schema in (("align", AlignSettings), ("wandb", WandbConfig), ("paths", PathsConfig))}
    settings = typed_section("", CommonSettings, container)
    typed = AlignConfig(dataset=dataset, **models, sae=sae, mapping=mappings, **sections, **vars(settings))
    typed.sources = resolve_sources(typed)
    widths = [typed.sources[side].model_cfg.target_width() for side in ("a", "b")]
    for name, settings in typed.mapping.items():
        settings.validate_widths(name, *widths)
    return typed
