"""Typed settings of a concept-transfer run (`scripts/transfer_concept.py`, configs/transfer_concept.yaml).

Model A learns `concept.classes_a`, model B learns `concept.classes_b`; each transfer method edits a copy of A
so that it also recognises `concept.target`, a class only B has seen. The methods are chosen by name in
`concept.methods`; each name is a key of `transfer` (one YAML per method in configs/transfer/), whose `type`
selects the registered class (transfer/base.py) and whose other keys are that class's settings.
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

TRANSFER_METHODS: Registry = Registry("transfer method", "transfer.<name>.type")

@dataclass
class TransferMethodConfig:
    """Settings every transfer method has; a method's own class extends it (one YAML per method)."""

    type: str = "none"  # the registered method class (transfer/methods/)

    def validate_for(self, name: str, cfg: "TransferConfig") -> None:
        """Refuse, in one ConfigError line naming `transfer.<name>.<setting>`, settings that cannot work with
        these models and classes (checked before anything is written). Default: nothing to check."""


@dataclass
class ConceptConfig:
    """Which classes each model learns, which class is transferred, and which methods are compared."""

    classes_a: List[int] = field(default_factory=lambda: [0, 1, 2, 3])  # model A's training classes
    classes_b: List[int] = field(default_factory=lambda: [2, 3, 4, 5])  # model B's training classes
    target: int = 4  # the class taught to A: in classes_b, not in classes_a
    distractor: int = 5  # specificity: the fraction of its test images the edited A calls `target` (lower is better)
    methods: List[str] = field(default_factory=lambda: ["none"])  # keys of `transfer`, in order (YAML: all of them)
    target_images: int = 100  # k: labelled target-class training images a method may use (methods' default)
    sae_images_per_class: Optional[int] = None  # the SAEs' training images per class (None: all; transfer/concepts.py)
    save_edited: bool = True  # keep each edited copy of A as checkpoints/edited_<method>

    @property
    def shared(self) -> list[int]:
        """Classes both models learned (the anchors of alignment methods)."""
        return sorted(set(self.classes_a) & set(self.classes_b))

    @property
    def shown_classes(self) -> list[int]:
        """The classes of the confusion matrix: every class either model learned, and the distractor."""
        return sorted(set(self.classes_a) | set(self.classes_b) | {self.distractor})

    def __post_init__(self) -> None:
        for setting in ("classes_a", "classes_b"):
            values = list(getattr(self, setting))
            if not values:
                raise ConfigError(f"concept.{setting} is empty; give the classes the model learns, e.g. [0,1,2,3]")
            if len(set(values)) != len(values):
                raise ConfigError(f"concept.{setting}={values} repeats a class; give each class once")
            if any(c < 0 for c in values):
                raise ConfigError(f"concept.{setting}={values} has a negative class; classes are labels >= 0")
        if self.target in self.classes_a:
            raise ConfigError(f"concept.target={self.target} is in concept.classes_a={list(self.classes_a)}: A already "
                              "learned it, so nothing would be transferred; choose a class of B that A lacks")
        if self.target not in self.classes_b:
            raise ConfigError(f"concept.target={self.target} is not in concept.classes_b={list(self.classes_b)}: B never "
                              f"learned it; choose one of {sorted(set(self.classes_b) - set(self.classes_a))}")
        if not self.shared:
            raise ConfigError(f"concept.classes_a={list(self.classes_a)} and concept.classes_b={list(self.classes_b)} "
                              "share no class; the models need at least one shared class to be related (e.g. [2,3])")
        if self.distractor == self.target or self.distractor < 0:
            raise ConfigError(f"concept.distractor={self.distractor} must be a class other than concept.target="
                              f"{self.target} (the class whose images must not become the target, e.g. 5)")
        if not self.methods:
            raise ConfigError(f"concept.methods is empty; give one or more of {', '.join(TRANSFER_METHODS.names())}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"concept.methods={list(self.methods)} repeats a method; give each once")
        if self.target_images < 1:
            raise ConfigError(f"concept.target_images={self.target_images} must be a positive integer (labelled "
                              "target-class images a method may use)")
        if self.sae_images_per_class is not None and self.sae_images_per_class < 1:
            raise ConfigError(f"concept.sae_images_per_class={self.sae_images_per_class} must be a positive integer, "
                              "or null for every training image of each class")


@dataclass
class TransferConfig(CommonSettings):
    """Everything a concept-transfer run needs, typed; built by `parse_transfer_config`."""

    dataset: DatasetConfig = None  # type: ignore[assignment]
    model_a: ModelConfig = None  # type: ignore[assignment]
    model_b: ModelConfig = None  # type: ignore[assignment]
    concept: ConceptConfig = field(default_factory=ConceptConfig)
    sae: SAEConfig = None  # type: ignore[assignment]  # the SAE of each model's penultimate features (concepts.py)
    transfer: Dict[str, Any] = field(default_factory=dict)  # method name -> its TransferMethodConfig
    wandb: WandbConfig = field(default_factory=WandbConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    # a resume may change these: the SAEs record what they were trained on and with which settings, and are trained
    # again when either changed; the SAE methods' results record the SAEs' weights and are then recomputed
    RESUME_NEUTRAL: ClassVar[tuple] = (("sae",), ("concept", "sae_images_per_class"))

    @property
    def model(self) -> ModelConfig:
        """The model whose input format the data splits are prepared for (A; B must read the same inputs)."""
        return self.model_a

    def methods(self) -> list[tuple[str, TransferMethodConfig]]:
        """(name, settings) of every method to run, in `concept.methods` order."""
        return [(name, self.transfer[name]) for name in self.concept.methods]

    def __post_init__(self) -> None:
        super().__post_init__()
        concept, classes = self.concept, self.dataset.num_classes
        every = [*concept.classes_a, *concept.classes_b, concept.distractor]
        if max(every) >= classes:
            raise ConfigError(f"concept: class {max(every)} is outside dataset.num_classes={classes} "
                              f"(labels 0..{classes - 1})")
        for group in ("model_a", "model_b"):
            if getattr(self, group).name != "mlp":
                raise ConfigError(f"{group}.name={getattr(self, group).name}: concept transfer compares image "
                                  f"classifiers read weight by weight; use an MLP preset (model@{group}=mlp_mega, "
                                  "mlp_wide, mlp_deep, mlp_superwide, mlp_verydeep or mlp)")
        for name in concept.methods:
            if name in self.transfer:
                continue
            if name in TRANSFER_METHODS:
                raise ConfigError(f"concept.methods: {name!r} is a transfer method whose settings are not loaded; add "
                                  f"it to the `transfer:` list of configs/transfer_concept.yaml (or give +transfer={name})")
            raise ConfigError(f"concept.methods: {name!r} is not a configured transfer method"
                              f"{closest(name, list(self.transfer))} (valid: {', '.join(self.transfer)})")
        if self.sae is not None:
            for group in ("model_a", "model_b"):
                width = getattr(self, group).hidden_sizes[-1]
                try:
                    self.sae.validate_for(width)
                except ConfigError as ex:
                    raise ConfigError(f"{ex} (for {group}'s {width}-wide penultimate features)") from None
        for name, method in self.methods():
            method.validate_for(name, self)


def parse_transfer_config(cfg: DictConfig) -> TransferConfig:
    """Validate a composed configs/transfer_concept.yaml and return the typed `TransferConfig` (raises ConfigError)."""
    importlib.import_module("sae_ception.transfer.methods")  # registers every method

    container = config_container(cfg)
    dataset = registered_section("dataset", DATASETS, "name", container.pop("dataset", None))
    sae = container.pop("sae", None)
    sae = registered_section("sae", SAE_TYPES, "type", sae) if sae is not None else None
    models = {group: model_group_section(group, container.pop(group, None)) for group in ("model_a", "model_b")}
    methods = {}
    for name, values in (container.pop("transfer", None) or {}).items():
        try:
            methods[name] = registered_section(f"transfer.{name}", TRANSFER_METHODS, "type", values)
        except ConfigError as ex:  # the registry names its setting `transfer.<name>.type`
            raise ConfigError(str(ex).replace("transfer.<name>.", f"transfer.{name}.")) from None
    sections = {group: typed_section(group, schema, container.pop(group, None) or {})
                for group, schema in (("concept", ConceptConfig), ("wandb", WandbConfig), ("paths", PathsConfig))}
    settings = typed_section("", CommonSettings, container)
    return TransferConfig(dataset=dataset, **models, sae=sae, transfer=methods, **sections, **vars(settings))
