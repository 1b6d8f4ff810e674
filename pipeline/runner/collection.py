"""A run over a collection, from the command line's settings to its exit code.

The coordinator (this process) owns the job store and the output folder: it checks what can be
checked before any worker starts (inputs, OUT, the device runtime, the checkpoint, the
settings against what OUT already holds), then hands one pass over the work to
`run_pass`. `resume` is the same run with the settings OUT stored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.errors import AnandaSkyError, BadArguments, ExitCode
from pipeline.ingest.rasterize import require_poppler
from pipeline.jobs import JobBackend, open_catalogue, open_for_run
from pipeline.jobs.connect import STATE_DIR, ensure_writable_folder, reported_store_errors
from pipeline.model import DEFAULT_PROMPT, checkpoint_checksum
from pipeline.model.checkpoint import check_weight_files
from pipeline.runner.placement import ChoosePlacement, Placement
from pipeline.runner.progress import close_run_log, log, log_to_file_only, setup_run_log
from pipeline.runner.result_writer import ModelStamp
from pipeline.runner.run_pass import run_pass
from pipeline.runner.settings import IMPLIED_BY_OLDER_STORES, RunSettings, model_code_checksum


def run_collection(settings: RunSettings, placement_for: ChoosePlacement) -> ExitCode:
    """Run (or resume) `settings` where `placement_for` puts it; the exit code that describes
    the outcome."""
    inputs = [Path(p) for p in settings.inputs]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise BadArguments(f"input not found: {', '.join(missing)}")
    out_dir = settings.out_path
    _refuse_out_as_input(inputs, out_dir)
    placement = placement_for(settings)
    placement.plan()  # a device or --workers refused here leaves no OUT folder behind
    ensure_writable_folder(out_dir)
    slots = placement.slots()
    if settings.rasterizer == "poppler":
        require_poppler()
    with (
        reported_store_errors(out_dir),
        open_for_run(out_dir, recover=settings.recover_store) as store,
    ):
        setup_run_log(out_dir, settings.quiet)
        if store.damaged_copy is not None:
            log.warning(
                "the damaged job store was kept as %s; a new one is built and pages are redone",
                store.damaged_copy,
            )
        elif settings.recover_store:
            log.info("--recover-store: the job store is healthy; nothing to recover")
        try:
            with reported_store_errors(out_dir):
                return _run_with_store(settings, store, inputs, slots, placement)
        except AnandaSkyError as exc:
            log_to_file_only(logging.ERROR, str(exc))  # why a run did not start, or stopped
            raise
        finally:
            close_run_log()


def _refuse_out_as_input(inputs: list[Path], out_dir: Path) -> None:
    """OUT is never read as input, so an input folder that is OUT itself would look empty."""
    for given in inputs:
        if given.is_dir() and out_dir.is_dir() and os.path.samefile(given, out_dir):
            raise BadArguments(
                f"--out {out_dir} is the input folder itself; choose another output folder "
                f"(one inside it, such as {given / 'ocr'}, is fine)"
            )


def _run_with_store(
    settings: RunSettings, store: JobBackend, inputs, slots, placement: Placement
) -> ExitCode:
    # The checkpoint is checked here, in seconds, so a bad one never gets as far as the workers
    # and the reason is in the run log.
    model_checksum = checkpoint_checksum(
        settings.model_dir, cache_file=settings.out_path / STATE_DIR / "model-checksum.json"
    )
    check_weight_files(settings.model_dir)
    if settings.decode_graphs and settings.resolved_impl() == "remote":
        # --impl auto on a remote-code folder: refused here, not by every worker after it
        # started loading the model.
        raise BadArguments(
            f"--decode-graphs needs the native model; {settings.model_dir} runs its own "
            "(remote) code: leave out --decode-graphs"
        )
    prompt = settings.prompt or DEFAULT_PROMPT
    fingerprint = settings.fingerprint(
        model_checksum,
        prompt,
        device_type=slots[0].device_type,
        code_checksum=model_code_checksum(settings.model_dir),
    )
    done_before = store.summary().pages["done"] if settings.new_config else 0
    added = store.check_fingerprint(
        fingerprint, new_config=settings.new_config, implied=IMPLIED_BY_OLDER_STORES
    )
    redone = done_before - store.summary().pages["done"] if done_before else 0
    if redone:
        log.info(
            "--new-config: the settings changed; the %d page(s) done under the old ones are "
            "redone and their files replaced",
            redone,
        )
    for key in added:
        log.warning(
            "this output folder was started by a version that did not record %s; recorded "
            "now as %s. Pages done earlier are kept: if they were made with another %s, run "
            "again with --new-config",
            key,
            fingerprint[key],
            key,
        )
    store.save_settings(settings.to_stored())
    model = ModelStamp(Path(settings.model_dir).resolve().name, model_checksum, prompt)
    return run_pass(settings, store, slots, model, inputs, placement, redoing=redone > 0)


def resume_collection(
    out_dir: Path, placement_for: ChoosePlacement, *, quiet: bool = False, **overrides
) -> ExitCode:
    """`resume OUT`: the same run again, with the settings its first run stored."""
    out_dir = Path(out_dir)
    if not (out_dir / STATE_DIR).is_dir():
        raise BadArguments(
            f"{out_dir} holds no run to resume: start one with `anandasky-batch run`"
        )
    with reported_store_errors(out_dir), open_catalogue(out_dir) as store:
        stored = store.stored_settings()
    if stored is None:
        raise BadArguments(
            f"{out_dir} has no stored settings: start it again with `anandasky-batch run`"
        )
    # OUT is the folder given, wherever the first run wrote it: a copied or moved output folder
    # is resumed in place, never in the folder it came from.
    settings = RunSettings.from_stored(
        stored, quiet=quiet, out_dir=str(out_dir.resolve()), **overrides
    )
    return run_collection(settings, placement_for)
