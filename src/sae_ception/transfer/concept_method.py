"""What the SAE-based transfer methods share: their common settings, reading both concept spaces, aligning them,
and reporting alignment quality beside each result.

Notation (the deep dive's): z = E(h) an SAE code of penultimate features h; μ_d^A, μ_d^B class centroids of A's
and B's codes; R the orthogonal map with C_B R ≈ C_A, fitted on the shared classes (rows of C: their centroids,
or their images' codes with `align_on: images`). A B-space code v (a row) is carried into A's space as v R.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from sae_ception.data import Split
from sae_ception.errors import ConfigError
from sae_ception.transfer.base import TransferMethod, TransferMethodConfig
from sae_ception.transfer.concept_alignment import FreeSpace, free_directions, linear_cka
from sae_ception.transfer.concepts import ConceptSAEs, centroids, encode
from sae_ception.transfer.layers import penultimate
from sae_ception.transfer.pathways import Alignment, fit_alignment

log = logging.getLogger(__name__)

ALIGN_ON = ("centroids", "images")
HEAD_ROWS = ("a", "b")
CONCEPT_CARRY = ("rotation", "reference")  # v R (correct) | v Rᵀ (the reference's `mm(v, R.T)`: the inverse)


@dataclass
class ConceptMethodConfig(TransferMethodConfig):
    """Settings of every SAE-based method."""

    target_images: int = 100  # k: labelled target images whose codes give B's target concept (YAML: concept's)
    anchors_per_class: Optional[int] = None  # images of each shared class (and of A's classes) read; None: all
    head_row: str = "a"  # a: A's own target output row reads the edited features (the reference's); b: B's copied in

    def validate_for(self, name, cfg) -> None:
        if self.target_images < 1:
            raise ConfigError(f"transfer.{name}.target_images={self.target_images} must be a positive integer")
        if self.anchors_per_class is not None and self.anchors_per_class < 1:
            raise ConfigError(f"transfer.{name}.anchors_per_class={self.anchors_per_class} must be a positive "
                              "integer, or null for every training image of each class")
        if cfg.sae is None:
            raise ConfigError(f"transfer.{name} reads A's and B's SAEs, but the config has no `sae` section; add "
                              "`- sae: concept_autoencoder` (or another SAE type) to the defaults")
        if self.head_row not in HEAD_ROWS:
            raise ConfigError(f"transfer.{name}.head_row={self.head_row!r} is not valid; use one of "
                              f"{', '.join(HEAD_ROWS)}")
        if self.head_row == "b":
            from sae_ception.transfer.shapes import require_same_last_width

            require_same_last_width(name, cfg, "copying B's target output row into A (head_row=b)")


@dataclass
class AlignedConceptConfig(ConceptMethodConfig):
    """Settings of the methods that carry B's codes into A's concept space by orthogonal Procrustes."""

    align_on: str = "centroids"  # centroids: the shared classes' mean codes (the deep dive's); images: every code
    carry: str = "rotation"  # rotation: v R (correct); reference: v Rᵀ (the reference's code; the inverse map)

    def validate_for(self, name, cfg) -> None:
        super().validate_for(name, cfg)
        if self.align_on not in ALIGN_ON:
            raise ConfigError(f"transfer.{name}.align_on={self.align_on!r} is not valid; use one of {', '.join(ALIGN_ON)}")
        if self.carry not in CONCEPT_CARRY:
            raise ConfigError(f"transfer.{name}.carry={self.carry!r} is not valid; use one of {', '.join(CONCEPT_CARRY)}")
        require_equal_sae_widths(name, cfg, "an orthogonal map between A's and B's concept spaces")


def require_equal_sae_widths(name: str, cfg, why: str) -> None:
    """A's and B's SAEs must have one width (a square orthogonal map between their codes)."""
    width_a, width_b = cfg.model_a.hidden_sizes[-1], cfg.model_b.hidden_sizes[-1]
    c_a, c_b = cfg.sae.width(width_a), cfg.sae.width(width_b)
    if c_a != c_b:
        d_sae = "null" if cfg.sae.d_sae is None else cfg.sae.d_sae
        raise ConfigError(f"transfer.{name}: {why} needs SAEs of equal width, but sae.d_sae={d_sae} gives "
                          f"{c_a} latents on A's {width_a}-wide features and {c_b} on B's {width_b}-wide ones; set "
                          "sae.d_sae (e.g. 24), or use cross_arch_aligner, or drop this method from concept.methods")


def free_dims(setting: Optional[int], c: int) -> int:
    """The number of free directions: `setting`, or min(8, c // 3) (the deep dive's k), at least 1."""
    return setting if setting is not None else max(1, min(8, c // 3))


def check_free_dims(name: str, value: Optional[int], cfg) -> None:
    if value is None:
        return
    c = cfg.sae.width(cfg.model_a.hidden_sizes[-1])  # the free directions are A's
    if not 1 <= value <= c:
        raise ConfigError(f"transfer.{name}.free_dims={value} must be in 1..{c} (A's concept dimension), or null "
                          "for min(8, d_sae // 3)")


@dataclass
class ConceptViews:
    """What a method reads of both concept spaces, counted: the anchors (shared classes' images) in both, the k
    target images in B, and A's own classes' images in A."""

    saes: ConceptSAEs
    anchors: Split  # images of the shared classes
    anchor_a: torch.Tensor  # (N, C_A) A's codes of them
    anchor_b: torch.Tensor  # (N, C_B) B's codes of them
    target_b: torch.Tensor  # (k, C_B) B's codes of the k target images
    target_x: torch.Tensor  # the k target images (k, D)
    used: Optional[Split]  # images of A's classes (None: not read)
    used_a: Optional[torch.Tensor]  # (M, C_A) A's codes of them


class ConceptSpaceMethod(TransferMethod):
    """Base of the SAE-based methods: the run hands them both SAEs (`uses_concept_saes`)."""

    uses_concept_saes: ClassVar[bool] = True

    def views(self, ctx, used: bool = True) -> ConceptViews:
        """Both SAEs, and the codes a method reads (counted); A's own classes' images only with `used`."""
        concept, cfg = ctx.concept, self.cfg
        saes = ctx.concept_saes()
        anchors = ctx.class_images(concept.shared, per_class=cfg.anchors_per_class)
        own = ctx.class_images(list(concept.classes_a), per_class=cfg.anchors_per_class) if used else None
        target_x = ctx.target_images(cfg.target_images)
        views = ConceptViews(saes, anchors, encode(ctx.model_a, saes.sae_a, anchors.x),
                             encode(ctx.model_b, saes.sae_b, anchors.x), encode(ctx.model_b, saes.sae_b, target_x),
                             target_x, own, encode(ctx.model_a, saes.sae_a, own.x) if used else None)
        self.report_similarity(ctx, views)
        return views

    @staticmethod
    def report_similarity(ctx, views: ConceptViews) -> None:
        """Linear CKA of A's and B's representations of the shared classes' images: penultimate features
        (`cka_features`) and SAE codes (`cka_concepts`)."""
        x = views.anchors.x
        ctx.report("cka_features", linear_cka(penultimate(ctx.model_a, x), penultimate(ctx.model_b, x)))
        ctx.report("cka_concepts", linear_cka(views.anchor_a, views.anchor_b))

    def align(self, ctx, views: ConceptViews) -> Alignment:
        """R with C_B R ≈ C_A (scipy's orthogonal Procrustes on the shared classes' centroids, or on every anchor
        image's codes). Reports `procrustes_residual` (‖C_B R − C_A‖_F / ‖C_A‖_F on what it was fitted to: the
        deep dive's ε) and `procrustes_residual_images` (the same on every anchor image's codes: how well R maps
        individual codes, not only the few centroids)."""
        shared = ctx.concept.shared
        labels = views.anchors.y
        if self.cfg.align_on == "centroids":
            fitted_b, fitted_a = centroids(views.anchor_b, labels, shared), centroids(views.anchor_a, labels, shared)
        else:
            fitted_b, fitted_a = views.anchor_b, views.anchor_a
        alignment = fit_alignment(fitted_b, fitted_a)
        ctx.report("procrustes_residual", alignment.residual)
        images = views.anchor_b.double() @ alignment.rotation - views.anchor_a.double()
        scale = float(torch.linalg.norm(views.anchor_a.double()))
        ctx.report("procrustes_residual_images", float(torch.linalg.norm(images)) / scale if scale > 0 else float("nan"))
        return alignment

    def carry(self, alignment: Alignment, v_C: torch.Tensor) -> torch.Tensor:
        """B-space code(s) v (C,) or (N, C) into A's space: v R, or v Rᵀ with carry=reference."""
        rotation = alignment.rotation if self.cfg.carry == "rotation" else alignment.rotation.T
        return (v_C.double() @ rotation).float()

    @staticmethod
    def free_space(ctx, views: ConceptViews, k: int) -> FreeSpace:
        """The k least-used directions of A's concept space (SVD of A's codes of its own classes' images).
        Reports `free_dims`, `free_space_energy` (the used codes' share of squared norm along them) and
        `free_space_dead_fraction` (the share of the directions' squared mass on latents that fire on none of those
        images: directions the SAE's decoder was hardly trained on)."""
        space = free_directions(views.used_a, k)
        ctx.report("free_dims", k)
        ctx.report("free_space_energy", space.energy)
        dead = (views.used_a > 0).sum(0) == 0
        mass = space.directions_CK.pow(2)
        ctx.report("free_space_dead_fraction", float(mass[dead].sum() / mass.sum()))
        return space


@dataclass
class GatedEditorSettings:
    """Settings of the editors with a detector gate, a strength and a blend (a mixin of method configs)."""

    free_dims: Optional[int] = None  # k free directions of A's concept space; None: min(8, d_sae // 3)
    spatial_weight: float = 0.4  # β: p = β p_spatial + (1 − β) p_learned (0: the learned detector alone)
    sigma: float = 5.0  # σ of p_spatial = max_d exp(−‖z − μ_d^A‖ / σ) over the shared classes' centroids
    detector_hidden: int = 16  # the learned detector's hidden width
    strength: float = 1.0  # γ: the injection's strength (learned, starting here)
    blend_init: float = 0.0  # w of the blend (ρ = σ(w) etc., learned, starting here)

    def validate_gate(self, name: str, cfg) -> None:
        import math

        def refuse(key: str, rule: str) -> None:
            raise ConfigError(f"transfer.{name}.{key}={getattr(self, key)} {rule}")

        if not 0 <= self.spatial_weight <= 1:
            refuse("spatial_weight", "must be in [0, 1] (the spatial detector's share of the gate)")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            refuse("sigma", "must be a finite number > 0 (the spatial detector's distance scale)")
        if self.detector_hidden < 1:
            refuse("detector_hidden", "must be a positive integer")
        for key in ("strength", "blend_init"):
            if not math.isfinite(getattr(self, key)):
                refuse(key, "must be a finite number")
        check_free_dims(name, self.free_dims, cfg)


def mixed_gate(ctx, views: ConceptViews, settings: GatedEditorSettings):
    """β SpatialGate(A's shared-class centroids, σ) + (1 − β) LearnedGate (editor.py)."""
    from sae_ception.transfer.editor import LearnedGate, MixedGate, SpatialGate

    anchors = centroids(views.anchor_a, views.anchors.y, ctx.concept.shared)
    c = views.anchor_a.shape[1]
    return MixedGate(SpatialGate(anchors, settings.sigma), LearnedGate(c, settings.detector_hidden),
                     settings.spatial_weight)


def edited_copy(ctx, views: ConceptViews, gate, injection, blend):
    """A copy of A with a ConceptEditor (a copy of A's SAE, this gate, injection and blend) attached; with
    head_row=b, B's target output row (weights and bias) copied into its head."""
    import copy

    from sae_ception.transfer.editor import ConceptEditor, attach
    from sae_ception.transfer.layers import linear_layers

    edited = ctx.copy_of_a()
    if ctx.settings.head_row == "b":
        head, head_b, target = linear_layers(edited)[-1], linear_layers(ctx.model_b)[-1], ctx.concept.target
        with torch.no_grad():
            head.weight[target] = head_b.weight[target].to(head.weight)
            head.bias[target] = head_b.bias[target].to(head.bias)
    editor = ConceptEditor(copy.deepcopy(views.saes.sae_a), gate, injection, blend).to(ctx.device)
    return attach(edited, editor)


def report_target_margin(ctx, edited, views: ConceptViews) -> None:
    """`target_margin`: on the k target images the method used, by how much the edited model's best logit beats
    its target logit, on average (0 when the target wins everywhere; what the edit had left to overcome).
    `head_reachable_margin`: the most any features within the range A's penultimate units take on the anchor and
    target images could make the edited head prefer the target (`reachable_margin`): below 0, no edit of A's
    features alone, in that range, can make it answer the target. `decoder_reachable_margin`: the best lead of the
    target logit found over codes z >= 0 decoded by A's SAE (`best_decoded_code`, from A's own codes): what an edit
    in A's concept space could reach at best, as far as a local search finds."""
    from sae_ception.transfer.layers import linear_layers

    logits = edited.logits_of(views.target_x, 1024, ctx.device)
    target = ctx.concept.target
    ctx.report("target_margin", float((logits.max(1).values - logits[:, target]).mean()))
    upper = penultimate(ctx.model_a, torch.cat([views.anchors.x, views.target_x])).max(0).values
    head = linear_layers(edited)[-1]
    weight, bias = head.weight.detach().cpu(), head.bias.detach().cpu()
    ctx.report("head_reachable_margin", reachable_margin(weight, bias, target, upper))
    margin, _ = best_decoded_code(views.saes.sae_a, weight, bias, target, search_starts(views))
    ctx.report("decoder_reachable_margin", margin)


def search_starts(views: ConceptViews) -> torch.Tensor:
    """Where a search of A's concept space starts: A's mean code of the shared classes and 8 anchors' codes (9, C)."""
    return torch.cat([views.anchor_a.mean(0, keepdim=True), views.anchor_a[:8]])


def best_decoded_code(sae, weight_KD: torch.Tensor, bias_K: torch.Tensor, target: int, starts_SC: torch.Tensor,
                      steps: int = 300, lr: float = 0.1) -> tuple[float, torch.Tensor]:
    """(margin, z): max over codes z >= 0 of min_j≠target (logit_target − logit_j) of the linear head (weight, bias)
    on D(z), searched by projected Adam from each start code (S, C) on the smooth surrogate
    logit_t − logsumexp(others), z clamped at 0 after every step; the best hard margin met along the way and its
    code (C,) (a lower bound of the maximum: a local search). The SAE is not changed."""
    weight, bias = weight_KD.float(), bias_K.float()
    others = torch.tensor([j for j in range(len(bias)) if j != target])
    z = starts_SC.detach().float().clone().clamp_min(0).requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=lr)
    best, best_z = -float("inf"), z.detach()[0].clone()
    for _ in range(steps + 1):
        logits = sae.decode(z) @ weight.T + bias
        margin = (logits[:, target] - logits[:, others].max(1).values).detach()
        if float(margin.max()) > best:
            best, best_z = float(margin.max()), z.detach()[int(margin.argmax())].clone()
        objective = (logits[:, target] - torch.logsumexp(logits[:, others], 1)).sum()
        optimiser.zero_grad(set_to_none=True)
        (-objective).backward()
        optimiser.step()
        with torch.no_grad():
            z.clamp_(min=0)
    return best, best_z


def reachable_margin(weight_KD: torch.Tensor, bias_K: torch.Tensor, target: int, upper_D: torch.Tensor) -> float:
    """max over features 0 <= h <= upper of min over classes j != target of (w_target − w_j)·h + (b_target − b_j):
    the largest lead the target logit of a linear head (weight (K, D), bias (K,)) can take over every other logit
    for non-negative (post-ReLU) features bounded by `upper` (D,). A linear programme, solved by scipy's linprog
    (HiGHS). Positive: some such features make the head answer the target; negative: none does."""
    from scipy.optimize import linprog

    w, b = weight_KD.double().numpy(), bias_K.double().numpy()
    others = [j for j in range(len(b)) if j != target]
    d = w.shape[1]
    # variables x = [h (D), t]; maximise t  <=>  minimise −t
    # subject to  t − (w_t − w_j)·h <= b_t − b_j  for every j != target
    a_ub = [[*(-(w[target] - w[j])), 1.0] for j in others]
    b_ub = [b[target] - b[j] for j in others]
    bounds = [(0.0, float(u)) for u in upper_D.double()] + [(None, None)]
    cost = [0.0] * d + [-1.0]
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if result.status != 0:
        raise RuntimeError(f"reachable_margin: linprog failed ({result.message})")
    return float(result.x[-1])
