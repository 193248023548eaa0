"""What a transfer method may use, and the record of what it used.

A method gets its images through `target_images`, `class_images`, `training_split` and `validation_split`,
which count distinct images (and whether target labels were used) into the method's `Budget`; optimisers
report their steps with `add_steps`. A and B are handed out frozen; a method edits `copy_of_a()`. The run's
splits are held privately, but Python cannot forbid a method's code to reach them through `run` (which it gets
for the training helpers): the budgets of the shipped methods are checked exactly by tests/transfer/."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Optional

import torch

from sae_ception.data import Split
from sae_ception.models import Classifier
from sae_ception.transfer.config import ConceptConfig, TransferMethodConfig
from sae_ception.transfer.data import TransferData, class_order
from sae_ception.transfer.measures import Budget

if TYPE_CHECKING:
    from sae_ception.run import RunContext
    from sae_ception.transfer.concepts import ConceptSAEs


class TransferContext:
    """One method's view of the run: settings, the frozen models A and B, the data, a seeded generator (for the
    method's own randomness: initialisation, batch order), and the images it may use."""

    def __init__(self, run: "RunContext", name: str, settings: TransferMethodConfig, model_a: Classifier,
                 model_b: Classifier, data: TransferData, generator: torch.Generator,
                 sample_seed: Optional[int] = None, saes: Optional["ConceptSAEs"] = None):
        self.run = run  # the RunContext: accelerator, config, progress settings (for training helpers)
        self.name = name
        self.settings = settings
        self.model_a = model_a
        self.model_b = model_b
        self._data = data  # the images, through the counting methods below only
        self.generator = generator
        self.budget = Budget()
        self.diagnostics: dict[str, float] = {}  # what a method reports about itself (e.g. an alignment residual)
        self._seen: dict[bool, set[int]] = {True: set(), False: set()}  # is target -> train indices seen
        self._seen_val: set[int] = set()  # validation indices read
        # which images a method gets: a fixed order of each class's training images, the same for every method of
        # the run (k target images are the same k whichever method asks, and the first k of any larger request)
        self.sample_seed = int(generator.initial_seed() if sample_seed is None else sample_seed)
        self._saes = saes  # the run's SAEs (transfer/concepts.py), for methods with uses_concept_saes

    @property
    def concept(self) -> ConceptConfig:
        return self._data.concept

    @property
    def device(self) -> torch.device:
        return self.run.accelerator.device

    def setting(self, key: str) -> str:
        return f"transfer.{self.name}.{key}"

    def copy_of_a(self) -> Classifier:
        """A trainable deep copy of A on the run's device (A itself stays untouched)."""
        edited = copy.deepcopy(self.model_a).to(self.device)
        for param in edited.parameters():
            param.requires_grad_(True)
        return edited

    # --- images, counted ------------------------------------------------------------------------------------
    def _see(self, indices: torch.Tensor, target: bool) -> None:
        self._seen[target].update(int(i) for i in indices)
        self.budget.target_images = len(self._seen[True])
        self.budget.other_images = len(self._seen[False])

    def _class_order(self, cls: int) -> torch.Tensor:
        """Class `cls`'s training-image positions in the run's fixed random order (independent of the method)."""
        return class_order(self._data, cls, self.sample_seed)

    def target_images(self, k: int, setting: str = "target_images") -> torch.Tensor:
        """k training images of the target class (k, D), in position order: the first k of the run's fixed
        random order of them, so every method asking for k gets the same k. Choosing them by class uses their
        labels, so the budget records labels as used. ConfigError when the split has fewer than k (the
        preflight of a method with `target_images` checks this first)."""
        self._data.require_target_images(self.setting(setting), k)
        chosen = self._class_order(self.concept.target)[:k].sort().values
        self._see(chosen, target=True)
        self.budget.target_labels = True
        return self._data.splits.train.x[chosen]

    def class_images(self, classes: list[int], per_class: Optional[int] = None) -> Split:
        """Training images of `classes` (never the target class): all of them, or the first `per_class` of each
        class in the run's fixed random order (the same images for every method). Counted as other images."""
        if self.concept.target in classes:
            raise ValueError("class_images serves the classes a method may use freely; ask target_images for the target")
        chosen = []
        for cls in classes:
            pool = self._data.indices("train", cls) if per_class is None else self._class_order(cls)[:per_class]
            chosen.append(pool)
        indices = torch.cat(chosen).sort().values if chosen else torch.zeros(0, dtype=torch.long)
        self._see(indices, target=False)
        train = self._data.splits.train
        return Split(train.x[indices], train.y[indices])

    def validation_split(self, classes: list[int]) -> Split:
        """Every validation image of `classes` with its label, to choose between candidates (e.g. the kept
        epoch); counted as validation images (labelled, whatever their class)."""
        val = self._data.splits.val
        indices = torch.nonzero(torch.isin(val.y, torch.tensor(list(classes)))).flatten()
        self._seen_val.update(int(i) for i in indices)
        self.budget.validation_images = len(self._seen_val)
        return Split(val.x[indices], val.y[indices])

    def concept_saes(self) -> "ConceptSAEs":
        """A's and B's SAEs (frozen; transfer/concepts.py). What they were trained on is counted as seen by this
        method (A's classes' images, B's other classes' images, and the same k target images every method gets,
        with their labels), and their training steps are added to its steps (diagnostics `steps_sae`)."""
        if self._saes is None:
            raise RuntimeError(f"transfer method {self.name} reads the run's SAEs but its class does not declare "
                               "uses_concept_saes = True")
        for which in ("a", "b"):
            chosen = self._saes.images[which]
            self.class_images(chosen.classes, chosen.per_class)
            if chosen.target_images:
                self.target_images(chosen.target_images, setting="target_images")
        steps = sum(self._saes.steps.values())
        self.add_steps(steps)
        self.report("steps_sae", steps)
        return self._saes

    @property
    def target_indices(self) -> list[int]:
        """Positions (in the training split) of the target images the method saw, ascending: which k they were."""
        return sorted(self._seen[True])

    def report(self, key: str, value: float) -> None:
        """Record a number about how the method went (results/methods/<name>.json `diagnostics`), e.g. the
        Procrustes residual of an alignment."""
        self.diagnostics[key] = float(value)

    def add_steps(self, steps: int) -> None:
        """Record optimiser steps (gradient steps, or the iterations of a quasi-Newton solver)."""
        self.budget.gradient_steps += int(steps)

    def target_and_negatives(self, k: int, negatives_per_class: Optional[int]) -> tuple[torch.Tensor, Split]:
        """What a method needs to find the target in B: k target images (`target_images`) and
        `negatives_per_class` training images of each of B's other classes (`class_images`), both counted."""
        positives = self.target_images(k)
        others = [c for c in self.concept.classes_b if c != self.concept.target]
        return positives, self.class_images(others, per_class=negatives_per_class)

    def training_split(self, classes: list[int]) -> Split:
        """Every training image of `classes` with its label; when the target class is among them, all of its
        images count as seen with their labels (e.g. the joint model, trained on A's classes and the target)."""
        labels = self._data.splits.train.y
        indices = torch.nonzero(torch.isin(labels, torch.tensor(list(classes)))).flatten()
        is_target = labels[indices] == self.concept.target
        self._see(indices[is_target], target=True)
        self._see(indices[~is_target], target=False)
        if bool(is_target.any()):
            self.budget.target_labels = True
        train = self._data.splits.train
        return Split(train.x[indices], train.y[indices])
