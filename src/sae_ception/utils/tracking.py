"""wandb logging: per-step losses on their own x-axis per stage, per-cycle metrics against the cycle index."""

from __future__ import annotations

import io
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from sae_ception.utils.io import naming_failed_writes, write_text

log = logging.getLogger(__name__)

STAGES = ("baseline", "sae", "auxiliary")


class Tracker:
    """A thin wrapper so stages log with one call and tests (wandb.mode=disabled) start nothing at all."""

    def __init__(self, wandb_cfg, run_dir: Path, config: dict[str, Any]):
        self.run = None
        self.files = run_dir / "wandb"  # what a failed write names (wandb copies images and logs there)
        if wandb_cfg.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        id_file = run_dir / "wandb_run_id.txt"  # a resumed run keeps logging into the same wandb run
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            project=wandb_cfg.project,
            entity=wandb_cfg.entity,
            group=wandb_cfg.group,
            name=wandb_cfg.name,
            tags=list(wandb_cfg.tags) or None,
            mode=wandb_cfg.mode,
            dir=str(run_dir),
            config=config,
            id=run_id,
            resume="allow",
        )
        for stage in STAGES:
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        self.run.define_metric("cycle")
        self.run.define_metric("eval/*", step_metric="cycle")
        if wandb_cfg.mode == "offline":
            log.info("wandb logs offline under %s/wandb (upload later with `wandb sync`)", run_dir)

    def log_step(self, stage: str, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            with naming_failed_writes(self.files):
                self.run.log({f"{stage}/{k}": v for k, v in metrics.items()} | {f"{stage}/step": step})

    def log_cycle(self, cycle: int, flat_metrics: dict[str, float]) -> None:
        if self.run is not None:
            with naming_failed_writes(self.files):
                self.run.log({f"eval/{k}": v for k, v in flat_metrics.items()} | {"cycle": cycle})

    def log_summary(self, results: list[dict], plots: list[Path]) -> None:
        """The cross-cycle table and the run's plots, as a wandb table and images."""
        if self.run is None:
            return
        import wandb

        from sae_ception.evaluation.report import flatten_metrics

        flats = [flatten_metrics(r["metrics"]) for r in results]
        columns = list(dict.fromkeys(k for flat in flats for k in flat))
        table = wandb.Table(columns=["cycle", *columns],
                            data=[[r["cycle"], *(flat.get(k) for k in columns)] for r, flat in zip(results, flats)])
        with naming_failed_writes(self.files):
            self.run.log({"summary/table": table} | {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})

    def log_feature_cards(self, cycle: int, cards: dict[int, tuple[bytes, str]]) -> None:
        """The analysis gallery: one image per feature card (PNG bytes and caption), `analysis/cycle_N/feature_<id>`."""
        if self.run is None:
            return
        import wandb
        from PIL import Image

        prefix = f"analysis/cycle_{cycle}/feature_"
        with naming_failed_writes(self.files):
            self.run.log({f"{prefix}{feature}": wandb.Image(Image.open(io.BytesIO(png)), caption=caption)
                          for feature, (png, caption) in cards.items()})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            with naming_failed_writes(self.files):
                run.finish(exit_code=exit_code)
