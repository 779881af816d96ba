"""Checkpoints: written atomically through accelerate's state saving, resumed exactly.

A checkpoint folder holds accelerate's state (model weights in safetensors; optimizer and
every RNG through ``torch.save``, loaded back with ``weights_only=True``) plus
``trainer_state.json`` (step, prompt-stream position, scheduler, KL controller, counters).
It is written to a temporary folder, flushed to disk (fsync) and renamed into place, so a
run killed mid-save, or a machine that loses power just after, never leaves a
``checkpoint-N`` that resume would pick up half-written. ``final/`` is published the same way.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from llm_rl.errors import CheckpointNotFoundError, OutputDirError

TRAINER_STATE = "trainer_state.json"


def check_output_dir(output_dir: str, overwrite: bool, resume: str | None) -> None:
    """Refuse to write into a folder that holds another run, unless told to overwrite or resume."""
    path = Path(output_dir)
    holds_run = (path / "metrics.jsonl").exists() or any(path.glob("checkpoint-*"))
    if holds_run and not overwrite and not resume:
        raise OutputDirError(
            f"output_dir {output_dir!r} already holds a run (metrics.jsonl or checkpoints). Choose another "
            f"--output_dir, pass --overwrite_output_dir to start afresh there, or --resume_from_checkpoint latest "
            f"to continue it."
        )
    if holds_run and overwrite and not resume:
        for item in [path / "metrics.jsonl", path / "eval.json", *path.glob("checkpoint-*")]:
            shutil.rmtree(item) if item.is_dir() else item.unlink(missing_ok=True)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    done = [p for p in Path(output_dir).glob("checkpoint-*") if (p / TRAINER_STATE).exists() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def save(trainer) -> Path:
    """Write ``checkpoint-{step}``: into a temporary folder first, renamed into place once complete.

    If the write fails (a full disk: ``OSError`` ENOSPC), the temporary folder is removed and an
    ``OSError`` says so; earlier checkpoints, and so what ``latest`` resolves to, are untouched.
    """
    acc, out = trainer.accelerator, Path(trainer.args.output_dir)
    final = out / f"checkpoint-{trainer.step}"
    tmp = out / f".tmp-checkpoint-{trainer.step}"
    if acc.is_main_process:  # leftovers of a run killed mid-save; resume never reads them
        for stale in [*out.glob(".tmp-checkpoint-*"), *out.glob(".old-checkpoint-*")]:
            shutil.rmtree(stale, ignore_errors=True)
    acc.wait_for_everyone()
    failure: OSError | None = None
    try:
        acc.save_state(str(tmp), safe_serialization=True)
        if acc.is_main_process:
            state = {
                "step": trainer.step,
                "skipped_steps": trainer.skipped_steps,
                "prompt_stream": trainer.stream.state_dict(),
                # in JSON, not accelerate's custom-object pickle, which it loads with weights_only=False
                "scheduler": trainer.scheduler.state_dict(),
                **trainer.extra_state(),
            }
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
    except OSError as err:
        failure = err
    # Every process learns of any one's failure: one that raised alone would leave the others
    # waiting for it at the next barrier forever.
    failed_errno = first_error_code(acc, failure)
    if failed_errno is not None:
        if failure is not None or acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(out)
        kept = (
            f"{previous.name} is intact and --resume_from_checkpoint latest resumes from it"
            if previous
            else "no earlier checkpoint exists"
        )
        reason = (failure.strerror or str(failure)) if failure is not None else (
            f"another process failed: {os.strerror(failed_errno)}")  # fmt: skip
        raise OSError(
            failed_errno,
            f"Could not write {final.name} in {out} ({reason}); the partial checkpoint was removed and "
            f"{kept}. Free disk space (or pass an --output_dir on a larger disk), then resume.",
        ) from failure
    acc.wait_for_everyone()  # every process has written its part (RNG state, FSDP/ZeRO shards) before the rename
    if acc.is_main_process:
        publish(tmp, final)
    acc.wait_for_everyone()
    return final


def first_error_code(acc, failure: OSError | None) -> int | None:
    """The errno of this or any other process's ``failure`` (a collective: every process calls it), or None."""
    code = (failure.errno or -1) if failure is not None else 0  # -1: an OSError without an errno
    if acc.num_processes > 1:
        codes = acc.gather(torch.tensor([code], device=acc.device)).tolist()
        code = next((c for c in codes if c), 0)
    if not code:
        return None
    return code if code > 0 else errno.EIO


def publish(tmp: Path, final: Path) -> None:
    """Make the complete folder ``tmp`` appear as ``final`` in one rename, after flushing it to disk.

    An existing ``final`` (a step saved again after a resume, a second ``save_model``) is moved
    aside first and deleted only once the new one is in place, so at every instant one
    complete copy sits under a name a reader would look for.
    """
    _fsync_tree(tmp)
    _swap(tmp, final)
    _fsync_dir(final.parent)


def _swap(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)  # atomic on one filesystem


def write_folder_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a temporary sibling of ``final``, which is then published; a failed write
    removes the partial folder and leaves ``final`` as it was.

    A ``final`` that holds only what the new save writes (an earlier save) is swapped whole. One
    that holds anything else (the user's own files) is never moved or deleted: each written
    file replaces its namesake, one atomic rename at a time, and the other files stay.
    """
    final = Path(final).absolute()
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"Cannot save a model to {final}: it is a file. Pass a folder path.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "its previous contents are untouched" if final.exists() else "nothing was left behind"
        raise OSError(
            err.errno,
            f"Could not write {final} ({err.strerror or err}); the partial folder was removed and {kept}. "
            "Free disk space (or save to a larger disk) and save again.",
        ) from err
    if final.exists() and {p.name for p in final.iterdir()} - {p.name for p in tmp.iterdir()}:
        _merge(tmp, final)
    else:
        publish(tmp, final)


def _merge(tmp: Path, final: Path) -> None:
    _fsync_tree(tmp)
    for entry in sorted(tmp.iterdir()):
        if entry.is_dir():
            _swap(entry, final / entry.name)
        else:
            os.replace(entry, final / entry.name)  # one file at a time: the user's other files stay
    tmp.rmdir()
    _fsync_dir(final)


def _fsync_tree(folder: Path) -> None:
    # Without it a rename can reach the disk before the data it names (ext4/xfs delayed allocation).
    for path in [*folder.rglob("*"), folder]:
        if path.is_dir():
            _fsync_dir(path)
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # no directory handles (Windows): the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (network mounts) refuse fsync on a directory
    finally:
        os.close(fd)


def load(trainer, where: str) -> Path:
    path = latest_checkpoint(trainer.args.output_dir) if where == "latest" else Path(where)
    if path is None or not (path / TRAINER_STATE).exists():
        raise CheckpointNotFoundError(
            f"No complete checkpoint found for resume_from_checkpoint={where!r} in {trainer.args.output_dir!r}. "
            f"Pass a checkpoint-N folder that holds {TRAINER_STATE}, or start without --resume_from_checkpoint."
        )
    trainer.accelerator.load_state(str(path))
    state = json.loads((path / TRAINER_STATE).read_text())
    trainer.step, trainer.skipped_steps = state["step"], state["skipped_steps"]
    trainer.stream.load_state_dict(state["prompt_stream"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.load_extra_state(state)
    return path
