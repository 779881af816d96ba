"""Faults: Ctrl-C mid-run checkpoints and exits cleanly, and the run resumes from there;
SIGKILL in the middle of a checkpoint save and a full disk while saving leave the previous
checkpoint as the one ``--resume_from_checkpoint latest`` picks."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llm_rl.trainers.checkpoint import latest_checkpoint
from launching import ENV, accelerate_launch


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_cleanly_then_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, str(ROOT / "recipes" / "grpo_math.py"), "--model", tiny_model_dir, "--output_dir", str(out),
            "--eval_steps", "0", "--eval_size", "4", "--per_device_batch_size", "2", "--num_generations", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen([*base, "--max_steps", "100000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr[-2000:]
    assert "interrupted: saved" in stdout
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").exists()
    stopped_at = json.loads((checkpoints[0] / "trainer_state.json").read_text())["step"]
    assert stopped_at >= 3 and not list(out.glob(".tmp-*"))

    resumed = subprocess.run([*base, "--max_steps", str(stopped_at + 2), "--resume_from_checkpoint", "latest"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps[-1] == stopped_at + 2


def _recipe_args(model_dir, out, *more):
    return [str(ROOT / "recipes" / "grpo_math.py"), "--model", model_dir, "--output_dir", str(out), "--eval_steps", "0",
            "--eval_size", "4", "--per_device_batch_size", "2", "--num_generations", "2", "--save_steps", "1", *more]


# Runs the recipe with accelerate's file writer patched: the weights of checkpoint-2 are left
# half-written, then the process signals the test and waits there to be killed.
STALL_IN_SAVE = textwrap.dedent("""
    import runpy, sys, time
    from pathlib import Path
    import accelerate.checkpointing as ckpt

    real_save, marker = ckpt.save, Path(sys.argv.pop(1))

    def stalling_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if ".tmp-checkpoint-2" in str(f) and str(f).endswith(".safetensors"):
            size = Path(f).stat().st_size
            with open(f, "r+b") as file:
                file.truncate(size // 2)
            marker.touch()
            time.sleep(600)

    ckpt.save = stalling_save
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint_for_resume(tiny_model_dir, tmp_path):
    out, marker, child = tmp_path / "run", tmp_path / "in-save", tmp_path / "stall_in_save.py"
    child.write_text(STALL_IN_SAVE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen([sys.executable, str(child), str(marker), *_recipe_args(tiny_model_dir, out, "--max_steps", "3")],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not marker.exists() and run.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), run.communicate(timeout=30)[1][-2000:]
    run.kill()  # SIGKILL: no handler, no cleanup
    run.communicate(timeout=30)
    assert run.returncode == -signal.SIGKILL

    half_written = out / ".tmp-checkpoint-2"
    assert half_written.exists() and not (half_written / "trainer_state.json").exists()
    assert not (out / "checkpoint-2").exists()
    assert latest_checkpoint(out).name == "checkpoint-1"

    resumed = subprocess.run([sys.executable, *_recipe_args(tiny_model_dir, out, "--max_steps", "3", "--resume_from_checkpoint", "latest")],
                             env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert latest_checkpoint(out).name == "checkpoint-3"
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["step"] == 3
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".old-*"))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s > 0] == [1, 2, 3]  # step 2 was redone once, not logged twice


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_full_disk_while_saving_gives_a_clear_error_and_keeps_the_previous_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    import accelerate.checkpointing

    from llm_rl import GRPOConfig, GRPOTrainer
    from llm_rl.data import arithmetic_dataset

    def config(**more):
        return GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=3, save_steps=1, per_device_batch_size=2,
                          num_generations=2, max_completion_length=4, **more)

    def reward(prompts, completions, **kwargs):
        return [float(len(c) % 3) for c in completions]

    real_save, before = accelerate.checkpointing.save, {}

    def disk_fills_up(obj, f, *args, **kwargs):
        # checkpoint-2: the weights fit, the optimizer state runs out of space half-way through its file
        if ".tmp-checkpoint-2" in str(f) and str(f).endswith("optimizer.bin"):
            before.update(_hashes(tmp_path / "run" / "checkpoint-1"))
            Path(f).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", disk_fills_up)
    trainer = GRPOTrainer(tiny_model_dir, [reward], args=config(), train_dataset=arithmetic_dataset(16, seed=0))
    with pytest.raises(OSError) as caught:
        trainer.train()
    assert caught.value.errno == errno.ENOSPC
    assert "Could not write checkpoint-2" in str(caught.value)
    assert "No space left on device" in str(caught.value)
    assert "checkpoint-1 is intact and --resume_from_checkpoint latest resumes from it. Free disk space" in str(caught.value)

    out = tmp_path / "run"
    assert not list(out.glob(".tmp-*")) and not (out / "checkpoint-2").exists()  # the partial folder was removed
    assert latest_checkpoint(out).name == "checkpoint-1"
    assert before and _hashes(out / "checkpoint-1") == before  # not a byte of it changed

    monkeypatch.undo()  # space freed: the run resumes from checkpoint-1 and finishes
    resumed = GRPOTrainer(tiny_model_dir, [reward], args=config(resume_from_checkpoint="latest"),
                          train_dataset=arithmetic_dataset(16, seed=0))
    assert resumed.train()["steps"] == 3
    assert latest_checkpoint(out).name == "checkpoint-3"


def test_a_failed_save_model_keeps_the_previous_final_model_loadable(tiny_model_dir, tmp_path, monkeypatch):
    import transformers.modeling_utils
    from transformers import AutoModelForCausalLM

    from llm_rl import GRPOConfig, GRPOTrainer
    from llm_rl.data import arithmetic_dataset

    config = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_batch_size=2, num_generations=2,
                        max_completion_length=4, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0)
    trainer = GRPOTrainer(tiny_model_dir, [lambda completions, **kw: [float(len(c)) for c in completions]],
                          args=config, train_dataset=arithmetic_dataset(8, seed=0))
    trainer.train()
    final = tmp_path / "run" / "final"
    before = _hashes(final)

    trainer.training_step()  # the weights move: a new save_model would write different bytes
    real_save_file = transformers.modeling_utils.safe_save_file

    def disk_fills_up(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_fills_up)
    with pytest.raises(OSError) as caught:
        trainer.save_model(final)
    assert caught.value.errno == errno.ENOSPC
    assert f"Could not write {final} (No space left on device)" in str(caught.value)
    assert "its previous contents are untouched" in str(caught.value)
    assert _hashes(final) == before and not list(final.parent.glob(".tmp-*"))
    AutoModelForCausalLM.from_pretrained(final)  # still the complete model of the first save

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", real_save_file)
    trainer.save_model(final)  # space freed: the new weights replace the old in one rename
    assert _hashes(final)["model.safetensors"] != before["model.safetensors"]
    assert not list(final.parent.glob(".tmp-*")) and not list(final.parent.glob(".old-*"))
    AutoModelForCausalLM.from_pretrained(final)


FULL_DISK_ON_RANK_1 = """
import errno, os, sys
from pathlib import Path
import torch
from llm_rl import GRPOConfig, GRPOTrainer
from llm_rl.data import arithmetic_dataset

model, out = sys.argv[1], Path(sys.argv[2])
real_save = torch.save  # accelerate writes each process's RNG state with torch.save

def rank_1_runs_out_of_space(obj, f, *args, **kwargs):
    if ".tmp-checkpoint-2" in str(f) and "random_states_1" in str(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    return real_save(obj, f, *args, **kwargs)

torch.save = rank_1_runs_out_of_space
config = GRPOConfig(output_dir=str(out), max_steps=3, save_steps=1, per_device_batch_size=1, num_generations=2,
                    max_completion_length=4, eval_steps=0)
trainer = GRPOTrainer(model, [lambda completions, **kw: [float(len(c)) for c in completions]], args=config,
                      train_dataset=arithmetic_dataset(16, seed=0))
try:
    trainer.train()
except OSError as err:
    (out / f"error-{trainer.accelerator.process_index}.txt").write_text(str(err))
    sys.exit(3)
"""


@pytest.mark.slow
def test_a_full_disk_on_one_of_two_processes_stops_both_with_the_same_clear_error(tiny_model_dir, tmp_path):
    script, out = tmp_path / "train.py", tmp_path / "run"
    script.write_text(FULL_DISK_ON_RANK_1)
    command = accelerate_launch(script, tiny_model_dir, out)
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)  # a hang fails here
    assert result.returncode != 0
    rank_0, rank_1 = (out / "error-0.txt").read_text(), (out / "error-1.txt").read_text()
    assert "Could not write checkpoint-2" in rank_1 and "(No space left on device)" in rank_1
    assert "Could not write checkpoint-2" in rank_0 and "(another process failed: No space left on device)" in rank_0
    for message in (rank_0, rank_1):
        assert "checkpoint-1 is intact and --resume_from_checkpoint latest resumes from it" in message
    assert latest_checkpoint(out).name == "checkpoint-1" and not list(out.glob(".tmp-*"))


def test_save_model_into_a_folder_with_other_files_keeps_them(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from llm_rl import GRPOConfig, GRPOTrainer
    from llm_rl.data import arithmetic_dataset

    config = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_batch_size=2, num_generations=2,
                        max_completion_length=4)
    trainer = GRPOTrainer(tiny_model_dir, [lambda completions, **kw: [float(len(c)) for c in completions]],
                          args=config, train_dataset=arithmetic_dataset(8, seed=0))
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "data" / "rows.jsonl").write_text("{}")
    trainer.save_model(mine)
    trainer.save_model(mine)  # again, over its own earlier files
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "data" / "rows.jsonl").read_text() == "{}"
    AutoModelForCausalLM.from_pretrained(mine)
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))
    with pytest.raises(NotADirectoryError, match="it is a file. Pass a folder path"):
        trainer.save_model(mine / "notes.txt")
