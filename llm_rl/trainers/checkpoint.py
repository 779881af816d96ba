"""Checkpoints: written atomically through accelerate's state saving, resumed exactly.

A checkpoint folder holds accelerate's state (model weights in safetensors; optimizer and
every RNG through ``torch.save``, loaded back with ``weights_only=True``) plus
``trainer_state.json`` (step, prompt-stream position, scheduler, KL controller, counters).
It is written to a temporary folder and renamed into place, so a run killed mid-save
never leaves a ``checkpoint-N`` that resume would pick up half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TRAINER_STATE = "trainer_state.json"


def check_output_dir(output_dir: str, overwrite: bool, resume: str | None) -> None:
    """Refuse to write into a folder that holds another run, unless told to overwrite or resume."""
    path = Path(output_dir)
    holds_run = (path / "metrics.jsonl").exists() or any(path.glob("checkpoint-*"))
    if holds_run and not overwrite and not resume:
        raise FileExistsError(
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
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(out)
        kept = (
            f"{previous.name} is intact and --resume_from_checkpoint latest resumes from it"
            if previous
            else "no earlier checkpoint exists"
        )
        raise OSError(
            err.errno,
            f"Could not write {final.name} in {out} ({err.strerror or err}); the partial checkpoint was removed and "
            f"{kept}. Free disk space (or pass an --output_dir on a larger disk), then resume.",
        ) from err
    acc.wait_for_everyone()  # every process has written its part (RNG state, FSDP/ZeRO shards) before the rename
    if acc.is_main_process:
        if final.exists():  # re-saving a step after a resume: move the old copy aside, never delete it in place
            old = out / f".old-checkpoint-{trainer.step}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)  # atomic on one filesystem
    acc.wait_for_everyone()
    return final


def load(trainer, where: str) -> Path:
    path = latest_checkpoint(trainer.args.output_dir) if where == "latest" else Path(where)
    if path is None or not (path / TRAINER_STATE).exists():
        raise FileNotFoundError(
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
