"""Checkpoints: written atomically through accelerate's state saving, resumed exactly.

A checkpoint folder holds accelerate's state (model, optimizer, scheduler, every RNG)
plus ``trainer_state.json`` (step, prompt-stream position, KL controller, counters).
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
    acc, out = trainer.accelerator, Path(trainer.args.output_dir)
    final = out / f"checkpoint-{trainer.step}"
    tmp = out / f".tmp-checkpoint-{trainer.step}"
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp), safe_serialization=True)
    if acc.is_main_process:
        state = {
            "step": trainer.step,
            "skipped_steps": trainer.skipped_steps,
            "prompt_stream": trainer.stream.state_dict(),
            **trainer.extra_state(),
        }
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
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
    trainer.load_extra_state(state)
    return path
