"""The shared body of every script: validate, claim the run folder, then run one task with logging set up.

Everything that can be wrong with the input is checked before anything is written, and reported as
one line (exit code 2) instead of a traceback: config values (config.py), Hydra's own composition errors
(a misspelt key, an unknown option, bad override syntax: `one_line_hydra_errors`), damaged files, a run
folder another live process is writing (run_folder.py), and a folder that cannot be written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sae_ception.config import closest, parse_config
from sae_ception.config_file import read_run_config
from sae_ception.entrypoints import ENTRYPOINTS
from sae_ception.errors import ArtifactError, ConfigError, DivergenceError, SAECeptionError
from sae_ception.run import RunContext, check_artifacts, check_resumable, resume_neutral
from sae_ception.run_folder import ClaimSweepFolder, RunFolderClaim
from sae_ception.utils.device import make_accelerator, set_threads
from sae_ception.utils.distributed import (check_batch_sizes, describe_processes, process_rank,
                                           single_process_launch_warning)
from sae_ception.utils.io import WRITE_ERRNOS, user_path
from sae_ception.utils.signals import sigterm_stops_cleanly
from sae_ception.utils.tracking import Tracker, check_wandb_files

log = logging.getLogger("sae_ception")

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def run_entrypoint(name: str, hydra_cfg: DictConfig) -> Any:
    """Body of `scripts/<name>.py`."""
    entry = ENTRYPOINTS[name]
    return run_task(hydra_cfg, entry.task, entry.preflight, from_run_folder=entry.from_run_folder, log_name=name,
                    parse=entry.parse)


Task = Callable[[RunContext], Any]


# --- Hydra's own errors as one line --------------------------------------------------------------------------
def hydra_error_line(ex: BaseException) -> Optional[str]:
    """One line for an error Hydra raises before the task runs (None for anything else)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(ex, MissingConfigException) and ex.options:
        group, _, option = str(ex.missing_cfg_file).rpartition("/")
        shown = _packaged_override(group, option) or group
        return f"{shown}={option} is not an option{closest(option, ex.options)} (valid: {', '.join(ex.options)})"
    if isinstance(ex, OverrideParseException):
        reason = str(ex.message).splitlines()[0]
        return f"cannot read the override {ex.override!r} ({reason}); see https://hydra.cc/docs/advanced/override_grammar/basic"
    if isinstance(ex, ConfigCompositionException):
        cause = ex.__cause__
        full_key, parent = getattr(cause, "full_key", None), getattr(cause, "parent_node", None)
        if full_key and isinstance(parent, DictConfig):
            prefix = full_key.rsplit(".", 1)[0] + "." if "." in full_key else ""
            valid = sorted(str(k) for k in parent.keys() if not str(k).startswith("_") and (prefix or k != "hydra"))
            hint = closest(full_key.rsplit(".", 1)[-1], valid, prefix)
            shown = ", ".join(valid) if len(valid) <= 25 else ", ".join(valid[:25]) + ", ..."
            return f"{full_key} is not a setting{hint} (valid{' in ' + prefix[:-1] if prefix else ''}: {shown})"
        return " ".join(str(ex).split())
    if isinstance(ex, OmegaConfBaseException):
        return str(getattr(ex, "msg", ex)).splitlines()[0]
    return None


def _packaged_override(group: str, option: str) -> Optional[str]:
    """`model@model_a` when the user typed `model@model_a=<option>` (a group placed under another key), else None."""
    for arg in sys.argv[1:]:
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if value == option and key.split("@", 1)[0] == group and "@" in key:
            return key
    return None


def _given_override(key: str) -> str:
    """The command-line override that set `key` (as the user typed it), else `key`."""
    return next((arg for arg in sys.argv[1:] if "=" in arg and override_key(arg) == key), key)


def _refused_run_setting(ex: BaseException) -> Optional[str]:
    """For a script that takes the run's settings from its folder: the override a Hydra error is about, when
    it is a training setting (which that script refuses whatever its value)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if isinstance(ex, MissingConfigException) and ex.options:
        group, _, option = str(ex.missing_cfg_file).rpartition("/")
        key, typed = group, f"{group}={option}"
    elif isinstance(ex, ConfigCompositionException) and getattr(ex.__cause__, "full_key", None):
        key = ex.__cause__.full_key
        typed = _given_override(key)
    else:
        return None
    return None if key.split(".", 1)[0] in COMMAND_LINE_SETTINGS or key.startswith("hydra") else typed


def exit_with_error_line(line: str) -> None:
    """Release a sweep folder no job used, print `error: <line>` on stdout in the product's log format (whatever
    logging Hydra set up: a sweep's launcher logs as "[HYDRA]") and exit with status 2."""
    ClaimSweepFolder.release_unused()
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s", (line,), None)
    sys.stdout.write(logging.Formatter(LOG_FORMAT).format(record) + "\n")
    sys.stdout.flush()
    sys.exit(2)


@contextlib.contextmanager
def one_line_hydra_errors(run_settings_only: bool = False) -> Iterator[None]:
    """Around a `@hydra.main` function: Hydra's multi-line composition errors (exit 1) become the product's one
    line (exit 2), and so does a write that fails in Hydra's own machinery (a sweep folder on a full or read-only
    disk). Hydra re-raises its errors only when HYDRA_FULL_ERROR is set, so it is set for the call; a user who set
    it themselves gets Hydra's full error, as Hydra documents. `run_settings_only`: the script takes the run's
    settings from its folder (evaluate.py), so a training setting is refused as such, not as a misspelt key.
    A sweep folder claimed for a sweep that never started a job is removed again."""
    user_wants_full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    logging.raiseExceptions = False  # a log file on a full disk must not print a traceback per record
    try:
        yield
    except Exception as ex:  # noqa: BLE001 - only Hydra's own errors and failed writes are turned into one line
        refused = _refused_run_setting(ex) if run_settings_only and not user_wants_full else None
        line = run_settings_only_line([refused], "the run folder's config.yaml") if refused else \
            None if user_wants_full else hydra_error_line(ex) or (write_error_line(ex) if isinstance(ex, OSError) else None)
        if line is None:
            raise
        if process_rank() == 0 or isinstance(ex, OSError):  # the same settings on every process: one line
            exit_with_error_line(line)
        ClaimSweepFolder.release_unused()
        sys.exit(2)
    finally:
        if not user_wants_full:
            os.environ.pop("HYDRA_FULL_ERROR", None)


# --- which folder, and which settings -----------------------------------------------------------------------
def override_key(override: str) -> str:
    """The key an override sets: `+sae.k=4` -> `sae.k`, `sae=topk` -> `sae`."""
    return override.split("=", 1)[0].lstrip("+~")


def command_line_overrides(hydra_cfg: DictConfig) -> list[str]:
    """The overrides the user typed (Hydra's `hydra.overrides.task`), whether the config came from
    `@hydra.main` or from the compose API with `return_hydra_config=True`; [] when unknown."""
    if "hydra" in hydra_cfg:
        return [str(o) for o in OmegaConf.select(hydra_cfg, "hydra.overrides.task", default=[])]
    from hydra.core.hydra_config import HydraConfig

    return [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []


def _in_sweep_job() -> Optional[Path]:
    """This job's folder inside a --multirun sweep (Hydra's runtime output dir), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().runtime.output_dir)
    return None


def _drop_empty_sweep_job_folder() -> None:
    """A sweep job refused before it wrote anything leaves no empty folder (Hydra creates it before the job runs)."""
    folder = _in_sweep_job()
    if folder is not None:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def job_folder(cfg, overrides: list[str]) -> tuple[Path, bool]:
    """(the run folder, whether a new one must be claimed): `paths.output_dir` when set, the job's folder in a
    sweep, else `run_dir`; a run_dir the user did not give (the timestamped default) is always a new folder."""
    if cfg.paths.output_dir:
        return Path(cfg.paths.output_dir), False
    sweep_job = _in_sweep_job()
    if sweep_job is not None:
        return sweep_job, False
    given = any(override_key(o) == "run_dir" for o in overrides)
    return user_path(cfg.run_dir).absolute(), not given


# Settings a script on a finished run may take from its own command line; everything else comes from the run.
RUN_INDEPENDENT = ("wandb", "device", "progress", "eval_batch_size", "eval_cycle", "analysis", "threads", "plots")
COMMAND_LINE_SETTINGS = (*RUN_INDEPENDENT, "paths", "run_dir", "resume")


def run_settings_only_line(overrides: list[str], where: str) -> str:
    """The refusal of training overrides given to a script that takes the run's settings from its folder."""
    return (f"{' '.join(overrides)}: this script takes every setting of the run from {where}, so it cannot be "
            f"given here; drop it (only {', '.join(f'{k}=...' for k in RUN_INDEPENDENT)} may be given)")


def config_from_run_folder(hydra_cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The run folder's own config.yaml, so `scripts/evaluate.py run_dir=X` needs no other override. Settings in
    RUN_INDEPENDENT given on this command line replace the run's; any other override is refused (it would be
    silently ignored otherwise), whatever its value."""
    folder = user_path(hydra_cfg.run_dir if not OmegaConf.select(hydra_cfg, "paths.output_dir") else hydra_cfg.paths.output_dir)
    saved = folder / "config.yaml"
    if not saved.is_file():
        raise ArtifactError(f"run_dir={folder} holds no config.yaml; give a run folder made by scripts/train_cycle.py")
    cfg = OmegaConf.create(read_run_config(saved))
    given = {override_key(o).split(".", 1)[0] for o in overrides}
    refused = [o for o in overrides if override_key(o).split(".", 1)[0] not in COMMAND_LINE_SETTINGS
               and not override_key(o).startswith("hydra")]
    if refused:
        raise ConfigError(run_settings_only_line(refused, str(saved)))
    for key in COMMAND_LINE_SETTINGS:
        if key in given or key in ("paths", "run_dir"):
            cfg[key] = hydra_cfg[key]
    cfg.paths.output_dir = str(folder)
    return cfg


# --- the task ------------------------------------------------------------------------------------------------
def _claim(ctx: RunContext, folder: Path, fresh: bool) -> RunFolderClaim:
    """Claim the run folder on the main process; every process learns the folder (or the refusal)."""
    claim, outcome = RunFolderClaim(folder, fresh), None
    if ctx.accelerator.is_main_process:
        try:
            outcome = str(claim.acquire())
        except SAECeptionError as ex:
            outcome = ex
    if ctx.accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        outcome = broadcast_object_list([outcome], from_process=0)[0]
    if isinstance(outcome, SAECeptionError):
        raise outcome
    ctx.use_folder(Path(outcome))
    return claim


class RunLogFile(logging.FileHandler):
    """The run's log file. When it cannot be written (a full disk) it stops, with one warning on the console,
    instead of printing logging's traceback for every record and masking the error that stops the run."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        self.broken = True
        log.warning("stopped writing %s: %s", self.baseFilename, WRITE_ERRNOS.get(error.errno, error.strerror))

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last flush failed too: what could be written was
            pass


@contextlib.contextmanager
def log_file(path: Optional[Path]) -> Iterator[None]:
    """Also write the console log into the run folder (`<run>/<script>.log`, appended on resume)."""
    if path is None:
        yield
        return
    handler = RunLogFile(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def write_error_line(ex: OSError) -> Optional[str]:
    """One line for a failed write (full disk, read-only or unwritable folder); None for other OS errors."""
    if ex.errno not in WRITE_ERRNOS:
        return None
    where = f" writing {ex.filename}" if ex.filename else ""
    return f"could not finish{where}: {WRITE_ERRNOS[ex.errno]} ({ex.strerror}); free space or fix the folder's " \
           "permissions, then rerun the same command to resume"


def exit_refused() -> None:
    """Exit with code 2 (the user's error, already printed), leaving a gloo process group (CPU) first: a process
    that exits while its gloo group is alive may abort in the group's destructor once the others are gone
    (`terminate called without an active exception`, SIGABRT instead of exit code 2). A GPU (NCCL) group is left
    to the process's exit: tearing it down may wait for peers still in a collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        with contextlib.suppress(Exception):  # the exit code, not a failed clean-up, is what the user needs
            dist.destroy_process_group()
    sys.exit(2)


def agreed_refusal(accelerator, refusal: Optional[SAECeptionError]) -> Optional[SAECeptionError]:
    """The error this process stops with before the run starts (None: it starts), given its own preflight
    `refusal`. With one process, `refusal` itself. With several, one collective (every process must call it)
    shares every process's refusal, so all stop when one does: a refusal the same as rank 0's is printed by rank 0
    alone; one that differs (say a file only one machine lacks) is marked `own_error` and printed by its process
    too; a process that passed stops with an error naming the processes that refused (printed by rank 0 if it
    passed). Errors before the run starts are otherwise found alike by every process, from the same settings."""
    if accelerator.num_processes == 1:
        return refusal
    from accelerate.utils import gather_object

    lines = gather_object([None if refusal is None else f"{type(refusal).__name__}: {refusal}"])
    if refusal is not None:
        refusal.own_error = lines[accelerator.process_index] != lines[0]
        return refusal
    refused = [rank for rank, line in enumerate(lines) if line is not None]
    if not refused:
        return None
    return SAECeptionError(f"process{'es' if len(refused) > 1 else ''} {', '.join(map(str, refused))} of "
                           f"{accelerator.num_processes} refused to start (the error printed with "
                           f"{', '.join(f'[rank {r}]' for r in refused)}); this process passed the same checks")


def run_task(hydra_cfg: DictConfig, task: Task, preflight: Optional[Task] = None, from_run_folder: bool = False,
             log_name: Optional[str] = None, parse: Callable[[DictConfig], Any] = parse_config) -> Any:
    """Validate, claim the run folder, check every input (`preflight`), then run `task` with the run's log file
    open. Exits with code 2 after one `error: ...` line for the user's errors (SAECeptionError, a failed write):
    an error found before the task starts is the same on every process and printed by rank 0 only (or by the
    process whose own it is, `agreed_refusal`); one raised while the task runs is printed by every process that
    raises it, other ranks' lines prefixed `[rank N]`, except a divergence (losses are reduced over processes:
    all see it alike). SIGTERM stops it as Ctrl-C does (exit code 143, `utils.signals`): wandb is finished and
    the folder resumes."""
    with sigterm_stops_cleanly():
        return _run_task(hydra_cfg, task, preflight, from_run_folder, log_name, parse)


def _run_task(hydra_cfg: DictConfig, task: Task, preflight: Optional[Task], from_run_folder: bool,
              log_name: Optional[str], parse: Callable[[DictConfig], Any]) -> Any:
    claim, started = None, False
    try:
        overrides = command_line_overrides(hydra_cfg)
        if from_run_folder:
            hydra_cfg = config_from_run_folder(hydra_cfg, overrides)
        cfg = parse(hydra_cfg)
        set_threads(cfg.threads)
        accelerator = make_accelerator(cfg.device, cfg.mixed_precision)
        check_batch_sizes(cfg, accelerator.num_processes)
        folder, fresh = job_folder(cfg, overrides)
        cfg.paths.output_dir = str(folder)  # the folder actually claimed replaces it (`_claim`)
        ctx = RunContext(cfg, accelerator)
        claim = _claim(ctx, folder, fresh)  # another live process on this folder: refused here
        try:
            refusal = None
            try:
                check_resumable(ctx.layout, cfg)  # under the lock: what the folder holds cannot change now
                check_artifacts(ctx.layout)
                check_wandb_files(ctx.layout.root, cfg.wandb)  # the run's wandb id and step ledger, if resumed
                ctx.splits  # data problems surface here, before anything is written
                if preflight is not None:
                    preflight(ctx)
            except SAECeptionError as ex:
                refusal = ex
            refusal = agreed_refusal(accelerator, refusal)  # one process refuses: every one stops
            if refusal is not None:
                raise refusal
        except BaseException:  # refused (or crashed) before the run started: leave no folder or lock behind
            claim.abandon()
            raise
        if accelerator.is_main_process:
            ctx.remove_stale_temporaries()
            ctx.save_config()
        with log_file(ctx.layout.root / f"{log_name}.log" if log_name and accelerator.is_main_process else None):
            log.info("run folder: %s (%s)", ctx.layout.root, describe_processes(accelerator))
            launch_warning = single_process_launch_warning()
            if launch_warning is not None:
                log.warning(launch_warning)
            ctx.tracker = Tracker(cfg.wandb, ctx.layout.root, config=asdict(cfg)) if accelerator.is_main_process else None
            exit_code = 1
            try:
                started = True  # from here an error may be one process's own: every process prints its errors
                result = task(ctx)
                exit_code = 0
                return result
            except SystemExit as ex:  # e.g. SIGTERM's Terminated: wandb records the process's exit code
                exit_code = ex.code if isinstance(ex.code, int) and ex.code else 1
                raise
            finally:  # wandb is closed even when the task fails (an error closing it then must not hide the first)
                if ctx.tracker is not None:
                    with contextlib.suppress(OSError) if exit_code else contextlib.nullcontext():
                        ctx.tracker.finish(exit_code)
    except DivergenceError as ex:
        models = ctx.layout.model_cycles()
        reuse = f"; inputs.model={ctx.layout.model(models[-1])} starts it from this run's model {models[-1]}" if models else ""
        if process_rank() == 0:  # found on every process alike (training losses are reduced across processes)
            if resume_neutral(ctx.cfg, str(ex).split("=", 1)[0]):  # e.g. a transfer run's sae.lr: same folder
                log.error("error: %s (rerun the same command with the new value: this folder keeps what is done)", ex)
            else:
                log.error("error: %s (in a new run_dir: this one records the old value%s)", ex, reuse)
        exit_refused()
    except SAECeptionError as ex:
        _drop_empty_sweep_job_folder()
        if process_rank() == 0 or started or getattr(ex, "own_error", False):
            log.error("error: %s", ex)
        exit_refused()
    except OSError as ex:
        line = write_error_line(ex)
        if line is None:
            raise
        log.error("error: %s", line)
        exit_refused()
    finally:
        if claim is not None:
            claim.release()
