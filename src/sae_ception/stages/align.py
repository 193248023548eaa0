"""The feature-alignment run (scripts/align_features.py): both sides' models, their activations at the aligned
layers (once), an SAE per side (and a ceiling SAE per side), then every mapping in both directions, in activation
space and in SAE-code space, beside the controls; one table, results/alignment.json, plots and a gallery of
matched feature pairs.

Resumable: models trained here, activations and SAEs are artifacts that record what made them; each table row
(results/rows/<key>.json) records its settings and inputs and is reused when they are unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict

import numpy as np
import torch

from sae_ception.activations import SPLITS
from sae_ception.alignment.collect import example_activations, recorded, word_activations
from sae_ception.alignment.config import AlignConfig
from sae_ception.alignment.evaluate import prediction_measures, spliced_accuracy, universality
from sae_ception.alignment.mapping import MAPPINGS, Mapping, column_means
from sae_ception.alignment.measures import count_above
from sae_ception.alignment.report import format_alignment_table, write_gallery, write_plots
from sae_ception.alignment.saes import decode_rows, run_sae, side_sae, write_codes
from sae_ception.alignment.sources import build_source_model, check_fits_data
from sae_ception.data import load_splits
from sae_ception.errors import ArtifactError, ConfigError
from sae_ception.models import MODELS, load_model, save_model
from sae_ception.models.pretrained import load_tokenizer
from sae_ception.run import RunContext
from sae_ception.transfer.training import new_classifier, train_on_classes
from sae_ception.utils.io import checkpoint_exists, read_json, write_json
from sae_ception.utils.digest import state_digest, value_digest
from sae_ception.utils.seeding import keyed_seed, stage_seed

log = logging.getLogger(__name__)

SIDES = ("a", "b")
OTHER = {"a": "b", "b": "a"}


# --- data and models ------------------------------------------------------------------------------------------
def raw_splits(ctx: RunContext):
    """The dataset's splits as loaded (texts, not tokens), read once per run and shared by side B's tokenizer, the
    word pairing and the gallery."""
    if getattr(ctx, "_raw_splits", None) is None:
        ctx._raw_splits = load_splits(ctx.cfg.dataset, seed=stage_seed(ctx.cfg.seed, 0, "data"))
    return ctx._raw_splits


def side_splits(ctx: RunContext, side: str):
    """The data as side `side`'s model reads it (A's is the run's own `ctx.splits`; B's tokenizer may differ)."""
    if side == "a":
        return ctx.splits
    cached = getattr(ctx, "_splits_b", None)
    if cached is None:
        cfg, source = ctx.cfg, ctx.cfg.sources["b"]
        cached = MODELS.get(source.model_cfg.name).prepare_splits(source.model_cfg, cfg.dataset, raw_splits(ctx),
                                                                  cache_dir=ctx.layout.root / "cache")
        ctx._splits_b = cached
    return cached


def align_preflight(ctx: RunContext) -> None:
    """What needs the data, checked before any model is trained: one process; each checkpoint fits the data; the
    word level reads text; every split has rows."""
    if ctx.accelerator.num_processes > 1:
        raise ConfigError(f"scripts/align_features.py runs in one process ({ctx.accelerator.num_processes} were "
                          "launched); run it with python, not accelerate launch or torchrun")
    cfg = ctx.cfg
    for side in SIDES:
        check_fits_data(cfg.sources[side], side_splits(ctx, side))
    if cfg.align.level == "word" and not ctx.splits.is_text:
        raise ConfigError(f"align.level=word pairs the tokens of texts, but dataset={cfg.dataset.name} holds feature "
                          "vectors; use align.level=example")
    for name in SPLITS:
        if len(getattr(ctx.splits, name).y) < 2:
            raise ConfigError(f"the {name} split of dataset {cfg.dataset.name} has {len(getattr(ctx.splits, name).y)} "
                              "examples; an alignment needs at least 2 in each split (dataset.val_fraction, "
                              "dataset.test_fraction, dataset.max_train_examples)")
    test_rows = len(ctx.splits.test.y)
    if test_rows < 100:
        log.warning("the test split has %d examples: correlations, counts and SVCCA over a few rows are noise (a "
                    "feature active on one test row correlates 1 with anything active on it alone); use more data "
                    "(dataset.test_fraction, dataset.max_test_examples)", test_rows)
    for side in SIDES:  # a model this folder trained must still fit its settings (resume)
        source = cfg.sources[side]
        if source.trained_here and checkpoint_exists(ctx.layout.source_model(side)):
            load_model(ctx.layout.source_model(side), new_classifier(ctx, source.model_cfg), f"model_{side}")


def side_model(ctx: RunContext, side: str):
    """Side `side`'s model, frozen on the CPU: a preset MLP is trained here once (checkpoints/model_<side>)."""
    source = ctx.cfg.sources[side]
    if not source.trained_here:
        splits = side_splits(ctx, side)
        return build_source_model(source, splits.input_dim, splits.num_classes)
    path = ctx.layout.source_model(side)
    if checkpoint_exists(path):
        model = new_classifier(ctx, source.model_cfg)
        load_model(path, model, f"model_{side}")
        log.info("model %s: found %s, skipping (resume)", side.upper(), path)
    else:
        splits = ctx.splits
        model, info = train_on_classes(ctx, source.model_cfg, splits.train, splits.val, ctx.seed_for(0, f"model_{side}"),
                                       stage=f"model_{side}", setting=f"model_{side}")
        save_model(model, path, extra={"stage": f"model_{side}", "val": info["val"], "steps": info["steps"]})
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _activations(ctx: RunContext, models: dict) -> dict:
    cfg, root = ctx.cfg, ctx.layout.root
    folders = {side: root / "activations" / side for side in SIDES}
    if cfg.align.level == "example":
        return {side: example_activations(folders[side], cfg.sources[side], models[side], side_splits(ctx, side),
                                          ctx.accelerator, cfg.eval_batch_size) for side in SIDES}
    raw = raw_splits(ctx)
    texts = {name: getattr(raw, name).x for name in SPLITS}
    labels = {name: getattr(raw, name).y for name in SPLITS}
    tokenizers = {side: load_tokenizer(cfg.sources[side].model_cfg.pretrained) for side in SIDES}
    return word_activations(folders, cfg.sources, models, texts, labels, tokenizers, cfg.dataset.max_length,
                            cfg.eval_batch_size, ctx.accelerator.device)


def _check_paired(acts: dict) -> None:
    """Both sides' rows are the same examples in the same order (their labels agree row by row)."""
    for name in SPLITS:
        a, b = acts["a"][name].labels_N, acts["b"][name].labels_N
        if a.shape != b.shape or not bool((a == b).all()):
            raise ArtifactError(f"activations/a and activations/b list the {name} examples in different orders "
                                f"({len(a)} and {len(b)} rows, labels differ); delete both folders to recompute them")


def _saes(ctx: RunContext, acts: dict) -> dict:
    """{name: (sae, stats)} for sae_a, sae_b and (align.ceiling) their seed twins."""
    cfg, out = ctx.cfg, {}
    for side in SIDES:
        source, made = cfg.sources[side], recorded(ctx.layout.root / "activations" / side)
        train = acts[side]["train"].acts_ND
        if cfg.align.sae_from_run and source.kind == "run":
            out[side] = run_sae(source.sae_checkpoint())
            if out[side][0].d_in != train.shape[1]:
                raise ArtifactError(f"align.sae_from_run: {source.sae_checkpoint()} reads {out[side][0].d_in}-wide "
                                    f"rows, model {side.upper()}'s layer {source.layer} is {train.shape[1]} wide")
            sae_cfg = out[side][0].cfg
        else:
            sae_cfg = cfg.sae
            out[side] = side_sae(ctx, f"sae_{side}", sae_cfg, train, made, ctx.seed_for(0, f"sae_{side}"))
        if cfg.align.ceiling:
            out[f"{side}_ceiling"] = side_sae(ctx, f"sae_{side}_ceiling", sae_cfg, train, made,
                                              ctx.seed_for(0, f"sae_{side}_ceiling"))
    return out


# --- the table ------------------------------------------------------------------------------------------------
class Table:
    """The rows of the alignment table, each computed once and kept in results/rows/ (reused on resume when what
    it was made with, its settings and exactly the artifacts it read, is unchanged; a damaged one is recomputed)."""

    def __init__(self, ctx: RunContext, digests: dict):
        self.ctx, self.digests, self.rows = ctx, digests, []

    def row(self, key: str, made_with: dict, reads: list[str], compute) -> dict:
        """The row `key`, made with `made_with` from the artifacts `reads` (names in `digests`)."""
        path = self.ctx.layout.root / "results" / "rows" / f"{key}.json"
        stamp = value_digest({**made_with, "reads": {name: self.digests[name] for name in reads}})
        if path.is_file():
            try:
                saved = read_json(path)
            except ArtifactError as ex:
                log.warning("%s; recomputing the row", str(ex).split("; ")[0])
                saved = None
            if isinstance(saved, dict) and saved.get("made_with") == stamp and isinstance(saved.get("row"), dict):
                self.rows.append(saved["row"])
                return saved["row"]
        started = time.perf_counter()
        row = compute()
        log.info("%s: %.1f s", key, time.perf_counter() - started)
        write_json(path, {"made_with": stamp, "row": row})
        self.rows.append(row)
        return row


def _space_rows(codes: dict, acts: dict, space: str, side: str, split: str) -> torch.Tensor:
    return codes[side][split] if space == "codes" else acts[side][split].acts_ND


def run_alignment(ctx: RunContext) -> dict:
    cfg: AlignConfig = ctx.cfg
    sources, settings = cfg.sources, cfg.align
    models = {side: side_model(ctx, side) for side in SIDES}
    with ctx.timed("activations", 0):
        acts = _activations(ctx, models)
    _check_paired(acts)
    with ctx.timed("sae", 0):
        saes = _saes(ctx, acts)
    codes = {name: write_codes(sae, acts[name[0]], ctx.layout.root / "codes" / name) for name, (sae, _) in saes.items()}
    own_accuracy = {side: _own_accuracy(ctx, side, acts, models) for side in SIDES}
    digests = {f"acts_{side}": json.loads((ctx.layout.root / "activations" / side / "made_with.json").read_text())
               for side in SIDES}
    digests |= {f"sae_{name}": state_digest(sae) for name, (sae, _) in saes.items()}
    digests |= {f"downstream_{side}": own_accuracy[side] for side in SIDES}  # None: not measured (e.g. turned off)
    digests["seed"] = cfg.seed
    table = Table(ctx, digests)
    thresholds = list(settings.thresholds)

    def downstream(target: str, space: str, pred: torch.Tensor) -> dict:
        if own_accuracy[target] is None:
            return {}
        replacement = decode_rows(saes[target][0], pred) if space == "codes" else pred
        splits = side_splits(ctx, target)
        accuracy = spliced_accuracy(models[target], splits.test.x, splits.test.y, replacement, cfg.eval_batch_size,
                                    ctx.accelerator.device)
        return {"accuracy": accuracy, "accuracy_change": accuracy - own_accuracy[target]}

    def measured(pred, true, target, space, extra: dict) -> dict:
        return {**extra, **prediction_measures(pred, true), **downstream(target, space, pred)}

    def reads(space: str, src: str, tgt: str, *more: str) -> list[str]:
        """The artifacts a row of `space` from `src` to `tgt` reads."""
        used = [f"acts_{src}", f"acts_{tgt}", f"downstream_{tgt}", "seed", *more]
        return used + ([f"sae_{src}", f"sae_{tgt}"] if space == "codes" else [])

    spaces = [s for s in ("activations", "codes") if any(s in m.spaces for _, m in cfg.mappings())]
    with ctx.timed("mappings", 0):
        for space in spaces:
            for direction in settings.directions:
                src, tgt = direction[0], direction[-1]
                x = {split: _space_rows(codes, acts, space, src, split) for split in SPLITS}
                y = {split: _space_rows(codes, acts, space, tgt, split) for split in SPLITS}
                base = {"space": space, "direction": direction}
                table.row(f"mean.{space}.{direction}", base, reads(space, src, tgt), lambda: measured(
                    column_means(y["train"]).float().expand(len(y["test"]), -1), y["test"], tgt, space,
                    {**base, "predictor": "mean", "kind": "control", "budget": {"parameters": y["train"].shape[1],
                                                                                 "steps": 0}}))
                if space == "codes":  # the target's own codes: R² 1; downstream, what its SAE alone costs
                    table.row(f"target_sae.{space}.{direction}", base, reads(space, src, tgt), lambda: measured(
                        y["test"].float(), y["test"], tgt, space,
                        {**base, "predictor": "target's own codes", "kind": "control",
                         "budget": {"parameters": 0, "steps": 0}}))
                if space == "activations" and x["test"].shape[1] == y["test"].shape[1]:
                    table.row(f"identity.{space}.{direction}", base, reads(space, src, tgt), lambda: measured(
                        x["test"].float(), y["test"], tgt, space,
                        {**base, "predictor": "identity", "kind": "control", "budget": {"parameters": 0, "steps": 0}}))
                for name, mapping_cfg in cfg.mappings():
                    mapping = MAPPINGS.get(mapping_cfg.type)(name, mapping_cfg)
                    if mapping.symmetric or space not in mapping_cfg.spaces:
                        continue
                    made = {**base, "mapping": name, "settings": asdict(mapping_cfg)}
                    seed = keyed_seed(cfg.seed, 0, "mapping", f"{name}.{space}.{direction}")
                    table.row(f"{name}.{space}.{direction}", made, reads(space, src, tgt), lambda: _fit_row(
                        mapping, x, y, seed, space, measured, tgt, {**base, "predictor": name, "kind": "mapping"}))
                    if space == "codes" and settings.ceiling:
                        twin = {split: codes[f"{tgt}_ceiling"][split] for split in SPLITS}
                        table.row(f"{name}.{space}.{direction}.ceiling", made,
                                  reads(space, src, tgt, f"sae_{tgt}_ceiling"), lambda: _fit_row(
                            mapping, twin, y, seed, space, measured, tgt,
                            {**base, "predictor": f"{name} (same model)", "kind": "ceiling"}))
        crosscoders = _crosscoder_rows(ctx, table, acts, measured)
    for row in table.rows:  # counts at the run's thresholds, from the stored per-feature correlations
        row["correlated"] = count_above(np.asarray(row["feature_correlations"], dtype=float), thresholds)
    started = time.perf_counter()
    similarity = {"a_vs_b": universality(codes["a"]["train"], codes["b"]["train"], codes["a"]["test"],
                                         codes["b"]["test"], thresholds, cfg.seed)}
    if settings.ceiling:
        for side in SIDES:
            similarity[f"{side}_vs_{side}_ceiling"] = universality(
                codes[side]["train"], codes[f"{side}_ceiling"]["train"], codes[side]["test"],
                codes[f"{side}_ceiling"]["test"], thresholds, cfg.seed)
    log.info("shared features: %.1f s", time.perf_counter() - started)
    document = {"sources": {side: sources[side].describe() for side in SIDES}, "level": settings.level,
                "rows_per_split": {name: len(acts["a"][name].labels_N) for name in SPLITS},
                "own_accuracy": own_accuracy,
                "saes": {name: {"d_sae": sae.d_sae, "fit": stats.get("final_fit"), "steps": stats.get("steps")}
                         for name, (sae, stats) in saes.items()},
                "universality": similarity, "crosscoders": crosscoders, "table": table.rows}
    write_json(ctx.layout.root / "results" / "alignment.json", document)
    print(format_alignment_table(document))
    if cfg.plots:
        write_plots(ctx, document)
    if settings.gallery_pairs:
        test_texts = raw_splits(ctx).test.x if ctx.splits.is_text else None
        write_gallery(ctx, document, codes, acts, settings.gallery_pairs, test_texts)
    if ctx.tracker is not None and not cfg.plots:  # with plots, write_plots logs the results beside them
        ctx.tracker.log_alignment(document, [])
    return document


def _own_accuracy(ctx: RunContext, side: str, acts: dict, models: dict):
    """Test accuracy of the side's own model (None when its head was never trained, or rows are words)."""
    source = ctx.cfg.sources[side]
    if not (ctx.cfg.align.downstream and source.has_trained_head and ctx.cfg.align.level == "example"):
        return None
    test = acts[side]["test"]
    return int((test.logits_NC.argmax(1) == test.labels_N).sum()) / len(test.labels_N)  # exact, as spliced_accuracy


def _fit_row(mapping: Mapping, x: dict, y: dict, seed: int, space: str, measured, target: str, extra: dict) -> dict:
    fitted = mapping.fit(x["train"], y["train"], x["val"], y["val"], seed=seed, space=space)
    pred = mapping.predict(x["test"])
    budget = {k: fitted[k] for k in ("parameters", "steps", "rows")}
    chosen = {k: v for k, v in fitted.items() if k not in budget}
    return measured(pred, y["test"], target, space, {**extra, "budget": budget, "fit": chosen})


def _crosscoder_rows(ctx: RunContext, table: Table, acts: dict, measured) -> dict:
    """Each crosscoder fit once on both sides' activations; one row per direction, and its latents' diagnostics."""
    cfg, out = ctx.cfg, {}
    for name, mapping_cfg in cfg.mappings():
        mapping = MAPPINGS.get(mapping_cfg.type)(name, mapping_cfg)
        if not mapping.symmetric:
            continue
        x = {side: {split: acts[side][split].acts_ND for split in SPLITS} for side in SIDES}
        made = {"mapping": name, "settings": asdict(mapping_cfg), "directions": list(cfg.align.directions)}
        seed = keyed_seed(cfg.seed, 0, "mapping", name)

        def compute() -> dict:
            fitted = mapping.fit_pair(x["a"]["train"], x["b"]["train"], seed=seed)
            rows = {}
            for direction in cfg.align.directions:
                src, tgt = direction[0], direction[-1]
                pred = mapping.predict_direction(x[src]["test"], direction)
                base = {"space": "activations", "direction": direction, "predictor": name, "kind": "mapping",
                        "budget": {k: fitted[k] for k in ("parameters", "steps", "rows")}}
                rows[direction] = measured(pred, x[tgt]["test"], tgt, "activations", base)
            diagnostics = {k: v for k, v in fitted.items() if k not in ("parameters", "steps", "rows")}
            diagnostics["test"] = mapping.joint_fvu(x["a"]["test"], x["b"]["test"])
            return {"rows": rows, "diagnostics": diagnostics,
                    "relative_norms": mapping.relative_norms.tolist()}

        saved = table.row(f"{name}.crosscoder", made, ["acts_a", "acts_b", "downstream_a", "downstream_b", "seed"],
                          compute)
        table.rows.pop()  # the stored entry holds both directions: the table gets one row each
        table.rows.extend(saved["rows"].values())
        out[name] = {**saved["diagnostics"], "relative_norms": saved["relative_norms"]}
    return out
