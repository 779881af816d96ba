"""Measured memory of a trainer, phase by phase, in a subprocess of its own.

    run_worker({"algorithm": "grpo", "model": PATH, "config": {...}, "steps": 3})   # -> bytes per phase

Each trainer runs in a fresh process (``python -m llm_rl.memory_measure SPEC OUT``), so
memory one run freed but the allocator kept cannot hide or inflate another run's peak.
Phases are marked by wrapping, in that process only, what a step calls (the trainers
are not edited): ``generate_rollout`` is "rollout", ``trainer.score`` is "score", from
there to the first training forward is "logprobs" (reference, old-policy and value
passes, advantages), and the training forwards and backwards with ``optimizer_update``
are "update" (from the first call of ``trainer.update_entry``).

- CPU: the process's resident set size (Linux). Writing "5" to /proc/self/clear_refs
  resets the peak (VmHWM) at each phase boundary. glibc is told to map every allocation
  over 64 KiB on its own and to give freed memory back at once (``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_``), so RSS follows the live tensors — as CUDA's allocated bytes
  do — instead of also counting memory glibc keeps for reuse.
- CUDA: ``torch.cuda.max_memory_allocated``, reset at each phase boundary.

The baseline is the memory just before the first model is loaded, after a warm-up on a
toy model has paid for lazy imports, kernels and thread pools (the runtime's own cost,
reported on its own line, not in the figures).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PHASES = ("rollout", "score", "logprobs", "update")
# a distributed launcher's variables would make the worker's Accelerator wait for peers that never come
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


# ---------------------------------------------------------------------------------- meters
class RssMeter:
    """Resident set size of this process, from /proc/self/status."""

    @staticmethod
    def _field(name: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(name + ":")) * 1024

    def now(self) -> int:
        return self._field("VmRSS")

    def peak(self) -> int:
        return self._field("VmHWM")

    def reset_peak(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)


class CudaMeter:
    """Bytes held by tensors on the current CUDA device (not the allocator's cache)."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda

    def now(self) -> int:
        self.cuda.synchronize()
        return self.cuda.memory_allocated()

    def peak(self) -> int:
        self.cuda.synchronize()
        return self.cuda.max_memory_allocated()

    def reset_peak(self) -> None:
        self.cuda.synchronize()
        self.cuda.reset_peak_memory_stats()


class PhaseRecorder:
    """Peak memory of each phase of each step: ``records`` of ``(step, phase, start, peak)``."""

    def __init__(self, meter):
        self.meter, self.records = meter, []
        self.phase, self.start, self.step, self.baseline = None, 0, 0, None

    def enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        if self.phase is not None:
            self.records.append((self.step, self.phase, self.start, max(self.meter.peak(), self.meter.now())))
        self.meter.reset_peak()
        self.phase, self.start = phase, self.meter.now()

    def around(self, fn, phase: str, then: str | None = None):
        """``fn`` with the phase switched to ``phase`` on entry and to ``then`` on exit."""

        def wrapped(*args, **kwargs):
            self.enter(phase)
            result = fn(*args, **kwargs)
            if then is not None:
                self.enter(then)
            return result

        return wrapped


class TensorMeter:
    """Peak bytes of the tensors created inside ``with TensorMeter() as meter:``, on any device (CPU too).

    A ``TorchDispatchMode`` sees every op's outputs, backward's included; each new storage is
    held by a weak reference, so it leaves the count as soon as torch frees it. ``peak``: the
    largest sum of live storages at an op boundary; ``largest``: the biggest single storage.
    Exact and allocator-free, for comparing two computations in a test; it slows each op down.
    """

    def __init__(self):
        self.peak, self.largest, self._live = 0, 0, {}

    def __enter__(self) -> TensorMeter:
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        meter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if hasattr(t, "untyped_storage") and t.layout == torch.strided:  # a sparse tensor's parts are counted
                        storage = t.untyped_storage()
                        if storage._cdata not in meter._live:
                            meter._live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                            meter.largest = max(meter.largest, storage.nbytes())
                meter._live = {k: v for k, v in meter._live.items() if not v[0].expired()}
                meter.peak = max(meter.peak, sum(size for _, size in meter._live.values()))
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


# ---------------------------------------------------------------------------------- the worker
def _warm_up(spec: dict) -> None:
    """One step of the same trainer on a toy model (one layer, 32 wide), then free it all.

    Lazy imports, kernels, thread pools and first-call caches are the runtime's cost; paid
    here, they fall before the baseline instead of into whichever phase first needs them.
    """
    from transformers import Qwen2ForCausalLM

    from llm_rl.models.loading import load_tokenizer
    from llm_rl.models.tiny import tiny_config

    tokenizer = load_tokenizer(spec["model"])
    with tempfile.TemporaryDirectory() as toy_dir, tempfile.TemporaryDirectory() as output_dir:
        Qwen2ForCausalLM(tiny_config(tokenizer, hidden_size=32, num_layers=1)).save_pretrained(toy_dir)
        tokenizer.save_pretrained(toy_dir)
        small = {"per_device_batch_size": 1, "num_generations": 2, "max_completion_length": 2, "min_completion_length": 0,
                 "gradient_accumulation_steps": 1}  # fmt: skip
        if spec["algorithm"] == "ppo":
            small["num_mini_batches"] = 1
        config = {**spec["config"], **small}
        toy = {**spec, "model": toy_dir, "value_model": toy_dir if spec.get("value_model") else None, "config": config}
        _build_trainer(toy, output_dir).training_step()
    gc.collect()
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand the toy's small freed blocks back too


def _touch(model) -> None:
    """Read every weight once: transformers maps them straight from the safetensors file, and the OS
    reads a page in when it is first used; touched here, they count as weights, not in a later phase."""
    import torch

    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.sum()


def _build_trainer(spec: dict, output_dir: str):
    from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
    from llm_rl.data import arithmetic_dataset
    from reward_models import math_correctness

    config_class, trainer_class = (PPOConfig, PPOTrainer) if spec["algorithm"] == "ppo" else (GRPOConfig, GRPOTrainer)
    config = config_class(output_dir=output_dir, overwrite_output_dir=True, **spec["config"])
    rewards = [spec["reward_model"]] if spec.get("reward_model") else [math_correctness]
    kwargs = {"value_model": spec["value_model"]} if spec.get("value_model") else {}
    return trainer_class(spec["model"], rewards, args=config, train_dataset=arithmetic_dataset(256, seed=0), **kwargs)


def measure(spec: dict) -> dict:
    """Run ``spec["steps"]`` steps of one trainer in this process; bytes per phase (see the module doc)."""
    import torch

    from llm_rl.models import loading
    from llm_rl.rollout import engine

    torch.set_num_threads(spec.get("num_threads", 1))
    on_cuda = torch.cuda.is_available()
    _warm_up(spec)
    recorder = PhaseRecorder(CudaMeter() if on_cuda else RssMeter())

    def load_with_baseline(load):
        def wrapped(*args, **kwargs):
            if recorder.baseline is None:  # just before the first model is loaded
                recorder.baseline = recorder.meter.now()
                recorder.enter("load")
            model = load(*args, **kwargs)
            _touch(model)
            return model

        return wrapped

    # wrapped in every module that imported it (policy, critic, a reference loaded anew), for this process only
    for loader in ("load_causal_lm", "load_backbone"):
        load = getattr(loading, loader)
        for module in [m for name, m in sys.modules.items() if name.startswith("llm_rl.")]:
            if getattr(module, loader, None) is load:
                setattr(module, loader, load_with_baseline(load))
    widths = set()  # (prompt, completion) widths of the rollouts, to compare with the predicted lengths

    def rollout_widths(generate):
        def wrapped(*args, **kwargs):
            rollout = generate(*args, **kwargs)
            widths.add((rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]))
            return rollout

        return wrapped

    engine.generate_rollout = recorder.around(rollout_widths(engine.generate_rollout), "rollout")  # the trainers' engine

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = _build_trainer(spec, output_dir)
        recorder.enter("idle")
        loaded = recorder.meter.now()
        trainer.score = recorder.around(trainer.score, "score", then="logprobs")
        update_entry = trainer.update_entry
        setattr(trainer, update_entry, recorder.around(getattr(trainer, update_entry), "update"))
        optimizer_growth = []  # AdamW creates its state in the first step() call

        def optimizer_step(step=trainer.optimizer.step):
            before = recorder.meter.now()
            step()
            optimizer_growth.append(recorder.meter.now() - before)

        trainer.optimizer.step = optimizer_step
        for step in range(1, spec["steps"] + 1):
            recorder.step = step
            trainer.training_step()
            trainer.step += 1
            recorder.enter("idle")

    later = [r for r in recorder.records if r[0] >= 2] or recorder.records  # AdamW state exists from step 2 on
    measured = {
        "weights": loaded - recorder.baseline,
        "optimizer_state": optimizer_growth[0],
        **{phase: max([peak - start for _, p, start, peak in later if p == phase], default=0) for phase in PHASES},
        "total": max(peak for *_, peak in recorder.records) - recorder.baseline,
    }
    return {"measured": measured, "runtime_baseline": recorder.baseline, "device": "cuda" if on_cuda else "cpu",
            "rollout_widths": sorted(widths), "records": recorder.records}  # fmt: skip


def trainer_spec(step, model: str, steps: int, reward_model: str | None = None, num_threads: int = 1) -> dict:
    """What ``measure`` runs for the step ``step`` (a ``llm_rl.memory.StepShape``) describes, so the
    measured run and the prediction share every setting. Completions are sampled at full length."""
    config = {"per_device_batch_size": step.prompts, "num_generations": step.num_generations,
              "gradient_accumulation_steps": step.gradient_accumulation_steps,
              "max_completion_length": step.completion_length, "min_completion_length": step.completion_length,
              "max_steps": steps, "warmup_steps": 0, "lr_scheduler_type": "constant", "use_peft": step.use_peft,
              "lora_r": step.lora_r, "lora_target_modules": step.lora_target_modules,
              "gradient_checkpointing": step.gradient_checkpointing, "bf16": step.mixed_precision}  # fmt: skip
    if step.algorithm == "ppo":
        config.update(num_mini_batches=step.num_mini_batches, kl_coef=0.05 if step.reference else 0.0)
    else:
        config.update(num_iterations=step.num_iterations, beta=0.04 if step.reference else 0.0)
    return {"algorithm": step.algorithm, "model": model, "config": config, "steps": steps, "num_threads": num_threads,
            "value_model": model if step.value_model == "separate" else None, "reward_model": reward_model}  # fmt: skip


def worker_env() -> dict[str, str]:
    """The environment of a measuring subprocess: glibc returns freed memory, no launcher, no hub."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("ACCELERATE_")}
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def run_worker(spec: dict, timeout: float | None = None) -> dict:
    """``measure(spec)`` in a fresh Python process; raises with the worker's stderr if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "llm_rl.memory_measure", str(spec_path), str(out_path)]
        done = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory worker failed ({spec['algorithm']}):\n{done.stderr[-4000:]}")
        return json.loads(out_path.read_text())


# ---------------------------------------------------------------------------------- the report
ROWS = {"weights": "weights (policy and copies)", "optimizer_state": "optimizer state (AdamW)",
        "rollout": "rollout peak", "score": "scoring peak", "logprobs": "log-prob passes peak",
        "update": "update peak (forward + backward + step)", "total": "**total**"}  # fmt: skip
MiB, GiB = 2**20, 2**30


def _amount(value, unit: int) -> str:
    """``value`` bytes in ``unit``: three significant digits below 10, else one decimal."""
    if value is None:
        return "—"
    amount = value / unit
    if 0 < amount < 0.01:
        return "<0.01"
    return f"{amount:.3g}" if amount < 10 else f"{amount:,.1f}"


def comparison_markdown(results: dict, labels: dict[str, str]) -> str:
    """The side-by-side tables of ``results`` (the memory_comparison.json layout), in MiB or GiB."""
    names = [n for n in labels if n in results]
    measured = all("measured" in results[n] for n in names)
    unit, unit_name = (GiB, "GiB") if max(results[n]["predicted"]["total"] for n in names) >= 10 * GiB else (MiB, "MiB")
    lines = ["# PPO vs GRPO memory", "", results["settings"]["summary"], ""]
    columns = [f"{labels[n]}: {kind}" for n in names for kind in (("predicted", "measured") if measured else ("predicted",))]
    lines += [f"## Peak by phase ({unit_name})" + (", predicted and measured" if measured else ", predicted"), "",
              "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]  # fmt: skip
    for key, title in ROWS.items():
        cells = []
        for n in names:
            cells.append(_amount(results[n]["predicted_phases"][key], unit))
            if measured:
                cells.append(_amount(results[n]["measured"][key], unit))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("")
    if measured:
        for n in names:
            error = results[n]["measured"]["total"] / results[n]["predicted_phases"]["total"] - 1
            lines.append(f"- {labels[n]}: measured total {error:+.1%} from predicted; runtime baseline (Python, torch "
                         f"and libraries, not in the figures) {_amount(results[n]['runtime_baseline'], MiB)} MiB")  # fmt: skip
        lines.append("")
    grpo = results.get("grpo")
    versus = [n for n in names if n != "grpo"] if grpo else []
    lines += [f"## Predicted components ({unit_name})", "", "| component | " + " | ".join(labels[n] for n in names)
              + "".join(f" | {labels[n]} / GRPO" for n in versus) + " |", "|---" * (len(names) + len(versus) + 1) + "|"]  # fmt: skip
    for key in results[names[0]]["predicted"]:
        values = [results[n]["predicted"][key] for n in names]
        if not any(values):
            continue  # e.g. no LoRA adapter, no reward model
        ratios = [_ratio(results[n]["predicted"][key], grpo["predicted"][key]) for n in versus]
        lines.append(f"| {ROWS.get(key, key.replace('_', ' '))} | " + " | ".join(_amount(v, unit) for v in values)
                     + "".join(f" | {r}" for r in ratios) + " |")  # fmt: skip
    lines += ["", ("The total is the persistent part (weights, optimizer state) plus the largest phase: phases run "
                   "one after another, so the components do not add up to it.")]
    return "\n".join(lines) + "\n"


def _ratio(a: int, b: int) -> str:
    return "—" if b == 0 else f"{a / b:.2f}x"


def plot_comparison(results: dict, labels: dict[str, str], path: str | Path) -> Path | None:
    """Stacked bars per trainer (predicted, and measured when there is one): weights, optimizer, largest phase."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'llm-rl[plot]'): skipping memory_comparison.png")
        return None
    bars = []
    for name in (n for n in labels if n in results):
        for kind in ("predicted_phases", "measured"):
            figures = results[name].get(kind)
            if figures:
                peak_phase = figures["total"] - figures["weights"] - figures["optimizer_state"]
                bars.append((f"{labels[name]}\n{kind.split('_')[0]}", figures["weights"], figures["optimizer_state"], peak_phase))
    fig, ax = plt.subplots(figsize=(1.6 * len(bars) + 2, 4.5))
    x = range(len(bars))
    bottom = [0.0] * len(bars)
    for i, (part, color) in enumerate(zip(("weights", "optimizer state", "largest phase"), ("#4c72b0", "#dd8452", "#55a868"))):
        heights = [bar[i + 1] / GiB for bar in bars]
        ax.bar(x, heights, bottom=bottom, label=part, color=color)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(list(x), [bar[0] for bar in bars], fontsize=8)
    ax.set_ylabel("GiB")
    ax.set_title(results["settings"]["model"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


if __name__ == "__main__":
    spec_file, out_file = sys.argv[1:3]
    Path(out_file).write_text(json.dumps(measure(json.loads(Path(spec_file).read_text()))))
