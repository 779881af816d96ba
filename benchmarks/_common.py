"""What the benchmarks share: model sizes, the models on disk, a per-phase step clock, memory.

Every benchmark times whole training steps of a real trainer. ``StepClock`` is told when
a step starts, when generation runs and when the first training forward of the step
begins, by thin wrappers around each framework's own functions (see ``vs_trl.py``), so
llm_rl and TRL are timed the same way:

    step       = from one step's start to the next one's (logging and metrics included)
    generation = time inside the framework's generate call (sampling included)
    update     = from the step's first training forward to the next step's start
                 (forward, backward, optimizer step, metrics)

The last step has no "next start" and is not counted; warm-up steps are dropped.

The clock is wall time, or with ``clock="cpu"`` this process's CPU time (user + system,
all threads): on a machine shared with other jobs, CPU time at one thread stays close to
what the step would take alone, while wall time grows with the contention.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

MiB = 2**20


@dataclass(frozen=True)
class ModelSize:
    """A model and the workload run on it by every benchmark at this size."""

    name: str
    hidden_size: int | None  # None: the embedded, warm-started tiny model
    num_layers: int | None
    completion_length: int
    grpo_prompts: int  # prompts per step; each gets `grpo_generations` completions
    grpo_generations: int
    ppo_prompts: int  # one completion each (TRL's PPO samples one per query)
    # Qwen2Config fields past width and depth (None: llm_rl.models.tiny.tiny_config's rule)
    intermediate_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    vocab_size: int | None = None  # None: the tiny tokenizer's 512; larger ids decode to nothing

    def config_overrides(self) -> dict:
        fields = {"hidden_size": self.hidden_size, "num_layers": self.num_layers, "intermediate_size": self.intermediate_size,
                  "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads, "vocab_size": self.vocab_size}  # fmt: skip
        return {k: v for k, v in fields.items() if v is not None}


SIZES = {
    # The recipes' default model and GRPO batch (32 prompts x 8): framework overhead dominates.
    "tiny": ModelSize("tiny", None, None, completion_length=8, grpo_prompts=32, grpo_generations=8, ppo_prompts=64),
    # The same architecture at ~30M parameters with 64-token completions: compute dominates.
    # Batches are small so that a full side-by-side run stays within minutes on 2 cores.
    "30m": ModelSize("30m", 512, 8, completion_length=64, grpo_prompts=4, grpo_generations=4, ppo_prompts=16),
}

# Real shapes (benchmarks/real_shape.py), kept out of SIZES so vs_trl.py's default run stays minutes long.
SHAPE_SIZES = {
    # Qwen2.5-0.5B's config (494M parameters, tied embeddings) with random weights: 2 prompts x G = 8 x 128 tokens.
    "0.5b": ModelSize("0.5b", 896, 24, completion_length=128, grpo_prompts=2, grpo_generations=8, ppo_prompts=16,
                      intermediate_size=4864, num_heads=14, num_kv_heads=2, vocab_size=151936),
    # A 2-layer, 64-wide model with a 32k vocabulary (2.2M parameters, nearly all embedding): seconds, for tests.
    "smoke": ModelSize("smoke", 64, 2, completion_length=8, grpo_prompts=2, grpo_generations=8, ppo_prompts=16,
                       vocab_size=32768),
}


def bench_cache_dir() -> Path:
    from llm_rl.models.tiny import default_cache_dir

    return default_cache_dir() / "bench"


def policy_path(size: ModelSize) -> Path:
    """The policy's folder: the embedded tiny model, or an untrained Qwen2 of the size, built once."""
    from llm_rl.models.tiny import build_tokenizer, build_untrained, ensure_tiny_model

    if size.hidden_size is None:
        return ensure_tiny_model()
    path = bench_cache_dir() / f"qwen2-{size.name}-seed0"
    if not (path / "model.safetensors").exists():
        tokenizer = build_tokenizer()
        model = build_untrained(tokenizer, seed=0, **size.config_overrides())
        _save_atomically(path, model, tokenizer)
    return path


def reward_model_path(size: ModelSize) -> Path:
    """A one-label ``AutoModelForSequenceClassification`` on the policy's backbone (score head untrained).

    TRL's PPO takes a reward *model*; llm_rl's PPO is given the same folder (its learned-reward
    path, ``reward_models.LearnedReward``). The head is random: only the cost is measured.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    policy = policy_path(size)
    path = bench_cache_dir() / f"reward-{policy.name}"  # named after the policy folder: rebuilt when that changes
    if not (path / "model.safetensors").exists():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(policy)
        model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        _save_atomically(path, model, tokenizer)
    return path


def _save_atomically(path: Path, model, tokenizer) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, path)  # a half-written folder is never mistaken for a built one
    except OSError:  # another process (pytest -n, a second benchmark) built the same folder first: keep its copy
        if not (path / "model.safetensors").exists():
            raise
        shutil.rmtree(tmp)


def parameter_count(model_dir: str | Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: nothing is allocated
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class PeakMemory:
    """Peak memory of the training steps: CUDA's allocator peak, or Linux peak RSS.

    ``start()`` (at the first step) records the resident memory and, on Linux, resets the
    RSS high-water mark; ``peak_mb()`` is the whole process's peak so far (model loading
    included) and ``train_extra_mb()`` how far the steps rose above what was resident
    before them.
    """

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.before_mb = self.load_peak_mb = 0.0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.before_mb = torch.cuda.memory_allocated() / MiB
            self.load_peak_mb = torch.cuda.max_memory_allocated() / MiB
            torch.cuda.reset_peak_memory_stats()
            return
        self.before_mb = _status_kib("VmRSS") / 1024
        self.load_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM (the peak RSS) to the current RSS; Linux >= 4.0
        except OSError:
            pass  # then the train peak also counts loading; the process peak is still right

    def train_peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / MiB
        return _status_kib("VmHWM") / 1024

    def peak_mb(self) -> float:
        return max(self.load_peak_mb, self.train_peak_mb())

    def train_extra_mb(self) -> float:
        return self.train_peak_mb() - self.before_mb


# ---------------------------------------------------------------------------- the step clock
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class StepClock:
    """Per-step phase times and token counts, fed by wrappers around a trainer's functions."""

    def __init__(self, clock: str = "wall"):
        self.clock, self.now = clock, CLOCKS[clock]
        self.starts: list[float] = []
        self.update_starts: dict[int, float] = {}
        self.generation_seconds: dict[int, float] = {}
        self.generated_tokens: dict[int, int] = {}
        self.update_tokens: dict[int, int] = {}
        self.memory = PeakMemory()
        self.peaks_mb: list[float] = []  # process peak at each step start: steps done so far

    @property
    def step(self) -> int:
        return len(self.starts) - 1

    def step_start(self) -> None:
        if not self.starts:
            self.memory.start()
        self.peaks_mb.append(self.memory.peak_mb())
        self.starts.append(self.now())

    def update_start(self) -> None:
        self.update_starts.setdefault(self.step, self.now())

    def timed_generation(self, generate):
        """``generate`` wrapped so that its time is added to the current step's generation."""

        def wrapper(*args, **kwargs):
            start = self.now()
            out = generate(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.generation_seconds[self.step] = self.generation_seconds.get(self.step, 0.0) + self.now() - start
            return out

        return wrapper

    def count_tokens(self, generated: int, updated: int) -> None:
        self.generated_tokens[self.step] = self.generated_tokens.get(self.step, 0) + int(generated)
        self.update_tokens[self.step] = self.update_tokens.get(self.step, 0) + int(updated)

    def summary(self, warmup: int, steps: int) -> dict:
        """Medians over the ``steps`` steps after ``warmup`` (each timed up to the next one's start)."""
        measured = list(range(warmup, min(len(self.starts) - 1, warmup + steps)))
        if not measured:
            raise RuntimeError(f"no measured step: {len(self.starts)} started, {warmup} warm-up; run more steps")
        step = [self.starts[i + 1] - self.starts[i] for i in measured]
        generation = [self.generation_seconds[i] for i in measured]
        update = [self.starts[i + 1] - self.update_starts[i] for i in measured]
        median = statistics.median
        return {
            "steps_measured": len(measured),
            "step_seconds": median(step),
            "step_seconds_all": [round(s, 4) for s in step],
            "generation_seconds": median(generation),
            "update_seconds": median(update),
            "other_seconds": median(s - g - u for s, g, u in zip(step, generation, update)),
            "generated_tokens_per_step": median(self.generated_tokens[i] for i in measured),
            "update_tokens_per_step": median(self.update_tokens[i] for i in measured),
            "generated_tokens_per_second": median(self.generated_tokens[i] / g for i, g in zip(measured, generation)),
            "update_tokens_per_second": median(self.update_tokens[i] / u for i, u in zip(measured, update)),
            "peak_memory_mb": self.peaks_mb[-1],
            "train_extra_memory_mb": self.memory.train_extra_mb(),
            "memory_kind": "cuda_max_allocated" if self.memory.cuda else "peak_rss",
            "clock": self.clock,
        }


def set_threads(threads: int) -> None:
    """The same intra-op thread count in every benchmark process (set before any torch work)."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(max(1, threads))


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_env(threads: int) -> dict[str, str]:
    """Environment of a benchmark subprocess: offline, and every thread pool at ``threads``."""
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        TRL_EXPERIMENTAL_SILENCE="1",
        PYTHONWARNINGS="ignore",
    )
