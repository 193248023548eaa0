"""wandb logging: per-step losses on their own x-axis per stage, per-cycle metrics against the cycle index; every
row at an explicit step from the run's step ledger (utils/wandb_steps.py), so a resumed run's segments never log
the same step."""

from __future__ import annotations

import io
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Optional

from sae_ception.errors import ArtifactError
from sae_ception.utils.io import naming_failed_writes, write_text
from sae_ception.utils.wandb_steps import (LEDGER_FILE, RUN_ID_FILE, StepLedger, earlier_segments_floor,
                                           read_run_id)

log = logging.getLogger(__name__)

STAGES = ("baseline", "sae", "auxiliary", "model_a", "model_b")  # each logs against its own step counter
MAX_GROUP = 128  # wandb's limit on a group name
GROUP_FILE = "wandb_group.txt"  # the group a run logged to (the sweep's when derived), for scripts/compare.py --wandb


def sweep_group() -> Optional[str]:
    """The name of the --multirun sweep this job belongs to, None outside one: the sweep folder relative to the
    folder the sweep was launched from (`multirun/2026-11-30/05-12-00`; the absolute path when it lies
    elsewhere), its last MAX_GROUP characters when longer. Every job of a sweep gets the same name, in whatever
    process or machine it runs (the launcher hands each job the sweep's hydra config)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    folder, launched = Path(str(hydra.sweep.dir)), Path(str(hydra.runtime.cwd))
    folder = folder if folder.is_absolute() else launched / folder
    try:
        name = str(folder.resolve().relative_to(launched.resolve()))
    except ValueError:
        name = str(folder.resolve())
    return name[-MAX_GROUP:]


def run_group(wandb_cfg) -> Optional[str]:
    """The wandb group of this run: `wandb.group` when set, else the sweep's name inside a --multirun sweep."""
    return wandb_cfg.group if wandb_cfg.group is not None else sweep_group()


def check_wandb_files(run_dir: Path, wandb_cfg) -> Optional[str]:
    """The wandb run id a resumed run folder recorded (None: none yet, or wandb disabled), after checking it and
    the run's step ledger; ArtifactError naming the file when either is damaged (run before anything is written)."""
    if wandb_cfg.mode == "disabled":
        return None
    id_file, ledger_file = run_dir / RUN_ID_FILE, run_dir / LEDGER_FILE
    run_id = read_run_id(id_file)
    if run_id is None and ledger_file.exists():
        raise ArtifactError(f"{id_file} is missing but {ledger_file} records this run's wandb steps; restore it, "
                            "or delete both so that this run logs to a new wandb run")
    if run_id is not None:
        StepLedger.load(ledger_file, run_id)
    return run_id


class Tracker:
    """A thin wrapper so stages log with one call and tests (wandb.mode=disabled) start nothing at all."""

    def __init__(self, wandb_cfg, run_dir: Path, config: dict[str, Any]):
        self.run = None
        self.steps: Optional[StepLedger] = None
        self.files = run_dir / "wandb"  # what a failed write names (wandb copies images and logs there)
        if wandb_cfg.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        id_file, ledger_file = run_dir / RUN_ID_FILE, run_dir / LEDGER_FILE
        run_id = check_wandb_files(run_dir, wandb_cfg)  # a resumed run keeps logging into the same wandb run
        # segments logged before the ledger existed numbered their rows from 0: this one starts after them
        floor = earlier_segments_floor(self.files, run_id) if run_id is not None and not ledger_file.exists() else 0
        run_id = run_id or uuid.uuid4().hex[:12]
        steps = StepLedger.load(ledger_file, run_id)
        write_text(id_file, run_id + "\n")
        group = run_group(wandb_cfg)
        if group is not None:
            write_text(run_dir / GROUP_FILE, group + "\n")
            config = {**config, "wandb": {**config.get("wandb", {}), "group": group}}  # the group actually used
            log.info("wandb group: %s%s", group, "" if wandb_cfg.group is not None else " (this sweep's; "
                     "wandb.group=... sets another)")
        self.run = wandb.init(
            project=wandb_cfg.project,
            entity=wandb_cfg.entity,
            group=group,
            name=wandb_cfg.name,
            tags=list(wandb_cfg.tags) or None,
            mode=wandb_cfg.mode,
            dir=str(run_dir),
            config=config,
            id=run_id,
            resume="allow",
            # the .wandb file gets the rows every flush_seconds: a SIGKILL (no chance to finish) loses only those
            settings={"x_transaction_log_flush_interval": float(wandb_cfg.flush_seconds)},
        )
        # online, a resumed run's next step comes from the server (run.step); offline it is 0
        self.steps = steps
        self.steps.start_segment(wandb_cfg.mode, floor=max(floor, self.run.step))
        for stage in STAGES:
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        self.run.define_metric("cycle")
        self.run.define_metric("eval/*", step_metric="cycle")
        segment = len(self.steps.segments)
        self._log({"run/segment": segment})  # where each segment starts, on wandb's own step axis
        if segment > 1:
            log.info("wandb: run %s resumed, segment %d from step %d (steps of earlier segments end below it)",
                     run_id, segment, self.steps.segments[-1]["first_step"])
        if wandb_cfg.mode == "offline":
            log.info("wandb logs offline under %s/wandb (upload later with "
                     "`wandb sync %s/wandb/offline-run-*/run-%s.wandb`: README, 'Uploading offline wandb runs')",
                     run_dir, run_dir, run_id)

    def _log(self, data: dict[str, Any]) -> None:
        """One history row at this segment's next step."""
        step = self.steps.next()
        with naming_failed_writes(self.files):
            self.run.log(data, step=step)

    def log_step(self, stage: str, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self._log({f"{stage}/{k}": v for k, v in metrics.items()} | {f"{stage}/step": step})

    def log_cycle(self, cycle: int, flat_metrics: dict[str, float]) -> None:
        if self.run is not None:
            self._log({f"eval/{k}": v for k, v in flat_metrics.items()} | {"cycle": cycle})

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
        self._log({"summary/table": table} | {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})

    def log_feature_cards(self, cycle: int, cards: dict[int, tuple[bytes, str]]) -> None:
        """The analysis gallery: one image per feature card (PNG bytes and caption), `analysis/cycle_N/feature_<id>`."""
        if self.run is None:
            return
        import wandb
        from PIL import Image

        prefix = f"analysis/cycle_{cycle}/feature_"
        self._log({f"{prefix}{feature}": wandb.Image(Image.open(io.BytesIO(png)), caption=caption)
                   for feature, (png, caption) in cards.items()})

    def log_objective(self, metric: str, value: Optional[float], split: str, cycle: int) -> None:
        """A search's objective (stages/objective.py) in the run's summary: `objective/value` (None: undefined),
        `objective/metric`, `objective/split`, `objective/cycle`."""
        if self.run is not None:
            with naming_failed_writes(self.files):
                self.run.summary.update({"objective/value": value, "objective/metric": metric,
                                         "objective/split": split, "objective/cycle": cycle})

    def log_transfer(self, summary: dict, plots: list[Path]) -> None:
        """A concept-transfer run's results: per method `transfer/<method>/<measure>`, `budget/<method>/<item>` and
        `diagnostics/<method>/<name>` (e.g. its Procrustes residual, CKA) in the summary, the table as a wandb table,
        the confusion figure as an image."""
        if self.run is None:
            return
        import wandb

        from sae_ception.transfer.report import COLUMNS, transfer_rows

        values = {}
        for name, result in summary["methods"].items():
            values |= {f"transfer/{name}/{k}": v for k, v in result["measures"].items() if isinstance(v, float)}
            values |= {f"budget/{name}/{k}": v for k, v in result["budget"].items()}
            values |= {f"diagnostics/{name}/{k}": v for k, v in (result.get("diagnostics") or {}).items()}
        with naming_failed_writes(self.files):
            self.run.summary.update(values)
        self._log({"transfer/table": wandb.Table(columns=COLUMNS, data=transfer_rows(summary))}
                  | {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})

    def log_alignment(self, document: dict, plots: list[Path]) -> None:
        """A feature-alignment run's results: `alignment/<space>/<direction>/<predictor>/<measure>` in the summary,
        the shared-feature counts as `universality/<comparison>/<measure>`, the table and the plots."""
        if self.run is None:
            return
        import wandb

        from sae_ception.alignment.report import COLUMNS, table_rows

        values = {}
        for row in document["table"]:
            prefix = f"alignment/{row['space']}/{row['direction']}/{row['predictor']}"
            values |= {f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, (int, float))}
        for key, u in document["universality"].items():
            values |= {f"universality/{key}/{k}": v for k, v in u.items() if isinstance(v, (int, float))}
            values |= {f"universality/{key}/matched_above_{t}": n for t, n in u["matched"].items()}
        threshold = sorted(document["universality"]["a_vs_b"]["matched"])[0]
        cells = table_rows(document, threshold)
        columns = ["row", *[c.replace("{t}", threshold) for c in COLUMNS]]
        with naming_failed_writes(self.files):
            self.run.summary.update(values)
        self._log({"alignment/table": wandb.Table(columns=columns, data=[[label, *c] for label, c in cells])}
                  | {f"plots/{p.stem}": wandb.Image(str(p)) for p in plots})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            with naming_failed_writes(self.files):
                run.finish(exit_code=exit_code)
