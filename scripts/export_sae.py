"""Write a run's SAE as a SAELens folder (cfg.json + sae_weights.safetensors), for `sae_lens.SAE.load_from_disk`.

    python scripts/export_sae.py run_dir=outputs/my_run                    # the last cycle that has an SAE
    python scripts/export_sae.py run_dir=outputs/my_run cycle=1 out=exports/sae_1
    python scripts/export_sae.py run_dir=outputs/my_run cycle=1 out=exports/sae_1 overwrite=true

Settings (key=value; not a Hydra app):
    run_dir    the run folder (required)
    cycle      which cycle's SAE, written plainly: 0, 1, 2, ... (default: the last one that has an SAE)
    out        the folder to write (default: <run_dir>/saelens/sae_cycle_<cycle>); written atomically. Never the
               run folder, a folder holding it, or a place inside it other than <run_dir>/saelens/
    overwrite  true: replace an `out` that is a SAELens folder (cfg.json + sae_weights.safetensors and nothing
               else); any other non-empty folder is never replaced (default: false, which refuses any)

The SAE's input normalisation is folded into the weights, so SAELens's encode/decode on raw activations give
this product's codes and reconstructions (sae/saelens_format.py says how). cfg.json's `metadata` records the
model, the module whose output the SAE reads (`hook_name`; `hf_hook_name` inside the Hugging Face model),
and under `sae_ception` the run, the cycle, the pooling and the product's SAE settings (sae/saelens_export.py).
A bad setting, a missing or damaged file, an `out` that cannot or may not be written, and a write that fails
are one line and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from sae_ception.cli import LOG_FORMAT, write_error_line
from sae_ception.errors import ConfigError, SAECeptionError
from sae_ception.sae.saelens_export import export_sae

log = logging.getLogger("sae_ception")

SETTINGS = {
    "run_dir": "the run folder",
    "cycle": "the cycle whose SAE is written (default: the last with an SAE)",
    "out": "the folder to write (default: <run_dir>/saelens/sae_cycle_<cycle>)",
    "overwrite": "true|false: replace an `out` that is a SAELens folder (default false)",
}


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments; ConfigError (one line listing the valid keys) for anything else or a repeated key."""
    args: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in SETTINGS:
            raise ConfigError(f"{arg!r} is not a setting of export_sae.py; give key=value with key one of "
                              f"{', '.join(SETTINGS)}")
        if key in args:
            raise ConfigError(f"{key} is given twice ({key}={args[key]} and {arg}); give it once")
        args[key] = value
    if not args.get("run_dir"):
        raise ConfigError("run_dir is missing; give run_dir=<a run folder made by scripts/train_cycle.py>")
    return args


def export(args: dict[str, str]) -> Path:
    """Check every setting and file, then write the folder (sae/saelens_export.py). SAECeptionError (one line)
    before any write; the folder written."""
    overwrite = args.get("overwrite", "false").lower()
    if overwrite not in ("true", "false"):
        raise ConfigError(f"overwrite={args['overwrite']!r} must be true or false")
    done = export_sae(Path(args["run_dir"]), args.get("cycle"), args.get("out"), overwrite == "true")
    sae = done.sae
    log.info("wrote %s: cycle %d's %s SAE (%d -> %d) of %s as a SAELens %s SAE; load it with "
             "sae_lens.SAE.load_from_disk(%r)", done.out, done.cycle, sae.registry_name, sae.d_in, sae.d_sae,
             args["run_dir"], done.architecture, str(done.out))
    return done.out


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout)
    try:
        export(parse_args(argv))
    except SAECeptionError as ex:
        log.error("error: %s", ex)
        sys.exit(2)
    except OSError as ex:  # reading the run failed (the write's own errors are OutputError): one line if known
        line = write_error_line(ex)
        if line is None:
            raise
        log.error("error: %s", line)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
