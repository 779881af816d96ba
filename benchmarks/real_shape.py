"""A Qwen2.5-0.5B-shaped step on this CPU, measured against ``predict_memory`` and TRL.

    python benchmarks/real_shape.py                                  # the six runs below, 128 completion tokens
    python benchmarks/real_shape.py --max_completion_length 256      # how the peak grows with the length
    python benchmarks/real_shape.py --only llm_rl_grpo,trl_grpo --json real_shape.json
    python benchmarks/real_shape.py --size smoke --only llm_rl_grpo --steps 1 --warmup 0   # seconds: a test

The model is Qwen2.5-0.5B's config (24 layers, hidden 896, 14 query / 2 KV heads,
intermediate 4864, vocabulary 151,936, tied embeddings) with random weights and the
embedded tiny tokenizer (ids past its 512 tokens decode to nothing), built once into the
benchmark cache (``_common.policy_path``). Every prompt tokenizes to exactly
``--prompt_length`` tokens (64) and completions are forced to ``--max_completion_length``
(``min_completion_length`` = ``max_completion_length``); G = 8 completions for each of 2
prompts per step (16 rows, one micro-batch; PPO: 16 prompts, one completion each), float32
weights, the arithmetic reward. Runs, each in its own process, one after the other:

    llm_rl_grpo       llm_rl's GRPOTrainer, float32
    llm_rl_grpo_gc    the same with gradient_checkpointing
    llm_rl_grpo_lora  the same with LoRA r=16 on every linear (the reference is the bare base)
    llm_rl_ppo        llm_rl's PPOTrainer with its value head on the policy (2 epochs, 1 mini-batch)
    trl_grpo          TRL 1.16's GRPOTrainer at the same settings (pip install -e ".[bench]")
    trl_grpo_gc       the same with gradient_checkpointing (TRL's default), beside llm_rl_grpo_gc

and, when ``--only`` names them, two variants of llm_rl_grpo (gpu_check.sh runs both):

    llm_rl_grpo_rollout_bf16  generation from a bfloat16 copy of the policy (``rollout_dtype``)
    llm_rl_grpo_bf16          bf16 autocast over float32 weights (``--precision bf16`` for this run)

Each worker bounds its address space (``RLIMIT_AS``, ``--memory_limit_gb``) so that a run
which outgrows the machine fails its own allocation and is reported "out of memory"
instead of swapping the machine; the limit is skipped on CUDA, whose driver reserves
address space far beyond what it uses. Memory is the process's peak RSS above the runtime
baseline (RSS after the framework's imports, before the model loads), or on CUDA
``torch.cuda.max_memory_allocated``; ``state_memory_mb`` is what ``predict_memory``
counts as weights, frozen copies, gradients and AdamW state (the same for TRL's run: the
same model, optimizer and reference). Times are the medians of ``_common.StepClock``; the
"log-prob passes" share is the step minus generation and update (the reference and
old-policy passes, and the rule reward, which costs microseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import traceback
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import MiB, SHAPE_SIZES, StepClock, default_threads, policy_path, set_threads, thread_env  # noqa: E402
from vs_trl import PRECISIONS  # noqa: E402  (the strings its runners read the precision from)

PROMPT_COUNT = 64  # distinct prompts in the dataset: more than any run draws
RUNS = {  # name: (framework, algorithm, llm_rl config fields, settings of this run that differ from the command line's)
    "llm_rl_grpo": ("llm_rl", "grpo", {}, {}),
    "llm_rl_grpo_gc": ("llm_rl", "grpo", {"gradient_checkpointing": True}, {}),
    "llm_rl_grpo_lora": ("llm_rl", "grpo", {"use_peft": True, "lora_r": 16}, {}),
    "llm_rl_ppo": ("llm_rl", "ppo", {}, {}),
    "trl_grpo": ("trl", "grpo", {}, {}),
    "trl_grpo_gc": ("trl", "grpo", {"gradient_checkpointing": True}, {}),  # TRL 1.16's default
    # not in the default list: the variants gpu_check.sh runs, and rollout_dtype beside llm_rl_grpo in one report
    "llm_rl_grpo_rollout_bf16": ("llm_rl", "grpo", {}, {"rollout_dtype": "bfloat16"}),
    "llm_rl_grpo_bf16": ("llm_rl", "grpo", {}, {"precision": PRECISIONS["bf16"]}),
}
DEFAULT_RUNS = ["llm_rl_grpo", "llm_rl_grpo_gc", "llm_rl_grpo_lora", "llm_rl_ppo", "trl_grpo", "trl_grpo_gc"]
# what an allocation failure prints: torch's CPU allocator, Python, C++ (a thread or buffer), CUDA; then the
# tokenizer's regex engine (Oniguruma) and Rust's allocator ("memory allocation of N bytes failed", then an abort)
# under RLIMIT_AS
OOM_MARKERS = ("can't allocate memory", "MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory",
               "fail to memory allocation", "memory allocation of ")


# ---------------------------------------------------------------------------- prompts of an exact length
def fixed_length_prompts(tokenizer, count: int, length: int, seed: int = 0):
    """``count`` arithmetic problems, each behind a filler preamble so that it tokenizes to exactly ``length`` tokens.

    BPE can merge across the join, so the preamble's length is searched, not computed.
    """
    from datasets import Dataset

    from llm_rl.data.arithmetic import arithmetic_dataset

    filler = tokenizer(" ".join(["Read the question below and reply with the number only."] * 40),
                       add_special_tokens=False)["input_ids"]  # fmt: skip
    rows = {"prompt": [], "answer": []}
    for problem in arithmetic_dataset(count, seed=seed):
        question = " " + problem["prompt"]
        n_question = len(tokenizer(question, add_special_tokens=False)["input_ids"])
        for n in range(length - n_question, max(-1, length - n_question - 6), -1):
            text = tokenizer.decode(filler[:n]) + question
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == length:
                break
        else:
            raise ValueError(f"no preamble makes {problem['prompt']!r} exactly {length} tokens; choose another --prompt_length")
        rows["prompt"].append(text)
        rows["answer"].append(problem["answer"])
    return Dataset.from_dict(rows)


# ---------------------------------------------------------------------------- settings and the prediction
def settings(args, model: str) -> dict:
    """The values every run is given (vs_trl.py's names, which its runners read)."""
    size = SHAPE_SIZES[args.size]
    C = args.max_completion_length or size.completion_length
    return {
        "size": args.size,
        "model": model,
        "prompts": f"{PROMPT_COUNT} arithmetic problems, each padded with a preamble to exactly {args.prompt_length} tokens",
        "prompt_length": args.prompt_length,
        "max_completion_length": C,
        "min_completion_length": C,
        "prompts_per_step": size.grpo_prompts,
        "num_generations": size.grpo_generations,
        "ppo_prompts_per_step": size.ppo_prompts,
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "learning_rate": 1e-5, "seed": 0,
        "precision": PRECISIONS[args.precision],
        "rollout_dtype": args.rollout_dtype,
        "total_steps": args.warmup + args.steps + 1,  # a step is timed up to the next one's start
        "warmup": args.warmup, "steps": args.steps,
        "torch_threads": args.threads,
        "clock": args.clock,
        "memory_limit_gb": args.memory_limit_gb,
        # GRPO
        "beta": 0.04, "epsilon": 0.2, "num_iterations": 1, "max_grad_norm": 1.0,
        # PPO (llm_rl's value head; no separate critic)
        "num_ppo_epochs": 2, "num_mini_batches": 1, "kl_coef": 0.05, "cliprange": 0.2, "cliprange_value": 0.2,
        "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95,
    }  # fmt: skip


def run_settings(name: str, s: dict) -> dict:
    """The settings as the runner reads them: the run's own (RUNS), and PPO's prompts per step (one completion each)."""
    _, algo, _, own = RUNS[name]
    s = {**s, **own}
    if algo == "ppo":
        return {**s, "prompts_per_step": s["ppo_prompts_per_step"], "num_generations": 1}
    return s


def predicted(name: str, s: dict, device: str) -> dict:
    """``predict_memory`` for the run (MB): the total, its phases, and the state (weights, frozen copies, gradients, AdamW)."""
    from llm_rl.memory import ModelShape, StepShape, predict_memory

    framework, algo, extra, _ = RUNS[name]
    r = run_settings(name, s)
    step_fields = {f.name for f in fields(StepShape)}
    rollout_copy = 0  # a rollout_dtype copy of the policy, where the predictor does not count it yet
    kwargs = {}
    model = ModelShape.from_config(r["model"])
    if framework == "llm_rl" and r["rollout_dtype"] not in (None, model.dtype):
        if "rollout_dtype" in step_fields:
            kwargs["rollout_dtype"] = r["rollout_dtype"]
        else:
            rollout_copy = model.num_params * {"bfloat16": 2, "float32": 4}[r["rollout_dtype"]]
    step = StepShape(
        algo, prompts=r["prompts_per_step"], num_generations=r["num_generations"], prompt_length=r["prompt_length"],
        completion_length=r["max_completion_length"], num_mini_batches=r["num_mini_batches"],
        value_model="shared" if algo == "ppo" else "none", reference=True,
        use_peft=extra.get("use_peft", False), lora_r=extra.get("lora_r", 16),
        gradient_checkpointing=extra.get("gradient_checkpointing", False), device=device,
        mixed_precision=r["precision"] == PRECISIONS["bf16"], **kwargs,
    )  # fmt: skip
    estimate = predict_memory(model, step)
    state = estimate.weights + estimate.components["gradients"] + estimate.components["optimizer_state"]
    return {
        "predicted_memory_mb": (estimate.total + rollout_copy) / MiB if framework == "llm_rl" else None,
        "predicted_phases_mb": {k: v / MiB for k, v in estimate.phases.items()} if framework == "llm_rl" else None,
        "state_memory_mb": (state + rollout_copy) / MiB,
        "rollout_copy_mb_added_to_prediction": rollout_copy / MiB,
    }


# ---------------------------------------------------------------------------- the worker (one run, one process)
def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def worker(name: str, s: dict, out: str) -> None:
    import torch

    cuda = torch.cuda.is_available()
    set_threads(s["torch_threads"])
    framework, algo, extra, _ = RUNS[name]
    from transformers import AutoTokenizer

    import vs_trl  # the runners: the same instrumentation as the side-by-side benchmark

    # each framework's trainer modules (and peft, which TRL imports too) before the baseline
    import peft  # noqa: F401

    if framework == "trl":
        import trl.trainer.grpo_trainer  # noqa: F401
    else:
        import llm_rl.trainers  # noqa: F401
        import reward_models  # noqa: F401
    dataset = fixed_length_prompts(AutoTokenizer.from_pretrained(s["model"]), PROMPT_COUNT, s["prompt_length"])
    if s["memory_limit_gb"] and not cuda:  # after the imports; CUDA's driver maps far more address space than it uses
        limit = int(s["memory_limit_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    baseline_mb = torch.cuda.memory_allocated() / MiB if cuda else rss_mb()
    clock = StepClock(s["clock"])
    r = run_settings(name, s)
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as output_dir:
            if framework == "llm_rl":
                from reward_models import math_correctness

                overrides = {**extra, "max_prompt_length": s["prompt_length"]}  # rollout_dtype: read from r
                meta = vs_trl.run_llm_rl(algo, r, clock, output_dir, shared_value_head=algo == "ppo",
                                         config_overrides=overrides, train_dataset=dataset,
                                         reward_funcs=[math_correctness])  # fmt: skip
            else:
                meta = vs_trl.run_trl_grpo(r, clock, output_dir, train_dataset=dataset,
                                           gradient_checkpointing=extra.get("gradient_checkpointing", False))
        summary = clock.summary(s["warmup"], s["steps"])
    except (MemoryError, RuntimeError) as error:  # an allocation past RLIMIT_AS (or the GPU) fails here
        if not any(marker in str(error) or marker in type(error).__name__ for marker in OOM_MARKERS):
            raise
        traceback.print_exc()
        Path(out).write_text(json.dumps({"status": "out of memory", "error": traceback.format_exc()[-800:]}))
        return
    peak_above = summary["peak_memory_mb"] - baseline_mb
    Path(out).write_text(json.dumps({**meta, **summary, "status": "ok", "process_peak_memory_mb": summary["peak_memory_mb"],
                                     "baseline_memory_mb": baseline_mb, "peak_memory_mb": peak_above}))  # fmt: skip


def run_worker(name: str, s: dict) -> dict:
    """One run in its own process; an allocation failure (or the kernel's OOM kill) is reported "out of memory", any
    other failure "failed" with its output printed, and the next run goes on (main exits non-zero at the end)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, json.dumps(s), "--worker_out", out.name]
        result = subprocess.run(cmd, env=thread_env(s["torch_threads"]), capture_output=True, text=True)
        text = Path(out.name).read_text()
    if result.returncode == 0 and text:
        return json.loads(text)
    output = result.stdout[-4000:] + result.stderr[-8000:]
    if result.returncode == -9 or any(marker in output for marker in OOM_MARKERS):
        return {"status": "out of memory", "error": f"exit {result.returncode}: " + output[-500:]}
    sys.stderr.write(output)
    print(f"{name} failed (exit {result.returncode}); its output is above", file=sys.stderr, flush=True)
    return {"status": "failed", "error": f"exit {result.returncode}: " + output[-2000:]}


# ---------------------------------------------------------------------------- the report
def report_row(result: dict, prediction: dict) -> dict:
    row = {**result, **prediction}
    if result["status"] == "ok":
        step = result["step_seconds"]
        row.update(
            memory_above_state_mb=result["peak_memory_mb"] - prediction["state_memory_mb"],
            generation_share=result["generation_seconds"] / step,
            logprob_share=result["other_seconds"] / step,
            update_share=result["update_seconds"] / step,
        )
    return row


TABLE = [  # (label, key, format)
    ("peak memory above baseline MB", "peak_memory_mb", "{:.0f}"),
    ("predict_memory MB", "predicted_memory_mb", "{:.0f}"),
    ("  peak / predicted", "peak_over_predicted", "{:.2f}"),
    ("state MB (weights, copies, grads, AdamW)", "state_memory_mb", "{:.0f}"),
    ("peak above the state MB", "memory_above_state_mb", "{:.0f}"),
    ("s / step", "step_seconds", "{:.2f}"),
    ("generated tokens / s", "generated_tokens_per_second", "{:.1f}"),
    ("  share: generation", "generation_share", "{:.0%}"),
    ("  share: log-prob passes (+ reward)", "logprob_share", "{:.0%}"),
    ("  share: update", "update_share", "{:.0%}"),
    ("prompt + completion tokens per row", "tokens_per_row", "{:.0f}"),
]


def print_report(s: dict, runs: dict) -> None:
    names = list(runs)
    print(f"\n{s['size']} shape: {s['prompts_per_step']} prompts x G = {s['num_generations']} (PPO: {s['ppo_prompts_per_step']} x 1), "
          f"{s['prompt_length']} prompt + {s['max_completion_length']} completion tokens, {s['precision']}"
          f"{', rollout_dtype ' + s['rollout_dtype'] if s['rollout_dtype'] else ''}; {s['steps']} measured step(s) after "
          f"{s['warmup']} warm-up, {s['clock']} clock, {s['torch_threads']} threads")  # fmt: skip
    width = max(18, *(len(n) + 2 for n in names))
    print(f"{'':<42}" + "".join(f"{n:>{width}}" for n in names))
    for label, key, fmt in TABLE:
        cells = []
        for n in names:
            value = runs[n].get(key)
            if runs[n]["status"] != "ok" and key not in ("predicted_memory_mb", "state_memory_mb"):
                cells.append(runs[n]["status"] if key == "peak_memory_mb" else "-")
            else:
                cells.append("-" if value is None else fmt.format(value))
        print(f"{label:<42}" + "".join(f"{c:>{width}}" for c in cells))
    for n in names:
        if runs[n]["settings"]:
            print(f"{n}: " + ", ".join(f"{k} {v}" for k, v in runs[n]["settings"].items()))
    bf16_rollout, plain = runs.get("llm_rl_grpo_rollout_bf16"), runs.get("llm_rl_grpo")
    if bf16_rollout and plain and bf16_rollout["status"] == plain["status"] == "ok":
        print(f"llm_rl_grpo_rollout_bf16 / llm_rl_grpo: generation s "
              f"{bf16_rollout['generation_seconds'] / plain['generation_seconds']:.2f}x, generated tokens/s "
              f"{bf16_rollout['generated_tokens_per_second'] / plain['generated_tokens_per_second']:.2f}x")  # fmt: skip
    for ours_name, trl_name in (("llm_rl_grpo", "trl_grpo"), ("llm_rl_grpo_gc", "trl_grpo_gc")):
        ours, trl = runs.get(ours_name), runs.get(trl_name)
        if ours and trl and ours["status"] == trl["status"] == "ok":
            print(f"{ours_name} / {trl_name}: peak above the state "
                  f"{ours['memory_above_state_mb'] / trl['memory_above_state_mb']:.2f}x, whole peak "
                  f"{ours['peak_memory_mb'] / trl['peak_memory_mb']:.2f}x, s/step {ours['step_seconds'] / trl['step_seconds']:.2f}x")  # fmt: skip
    print("memory: the process's peak RSS (CUDA: max_memory_allocated) minus its RSS after imports; predicted and state: "
          "llm_rl.memory.predict_memory\n(TRL's state is the same model, reference and AdamW; its prediction is not llm_rl's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SHAPE_SIZES), default="0.5b", help="0.5b: Qwen2.5-0.5B's shape; smoke: seconds")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per run (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not measured")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated runs of {', '.join(RUNS)} (default: {', '.join(DEFAULT_RUNS)})")
    parser.add_argument("--max_completion_length", type=int, default=None,
                        help="completion tokens, all sampled (default: the size's, 128 at 0.5b)")
    parser.add_argument("--prompt_length", type=int, default=64, help="tokens of every prompt")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="fp32, or bf16 autocast over float32 weights")
    parser.add_argument("--rollout_dtype", choices=["float32", "bfloat16"], default=None,
                        help="llm_rl runs generate from a copy in this dtype (RLConfig.rollout_dtype); TRL's are unchanged")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads in every process")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall time, or process CPU time")
    parser.add_argument("--memory_limit_gb", type=float, default=None,
                        help="address-space bound of each run (RLIMIT_AS; default: this machine's memory less 2 GB; 0: none)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--worker", nargs=2, metavar=("RUN", "SETTINGS"), help=argparse.SUPPRESS)
    parser.add_argument("--worker_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, s = args.worker
        worker(name, json.loads(s), args.worker_out)
        return

    names = args.only.split(",") if args.only else DEFAULT_RUNS
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"--only: unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    if args.prompt_length < 16 or (args.max_completion_length is not None and args.max_completion_length < 1):
        parser.error(f"--prompt_length must be >= 16 (an arithmetic problem) and --max_completion_length >= 1, "
                     f"got {args.prompt_length} and {args.max_completion_length}")  # fmt: skip
    if any(RUNS[n][0] == "trl" for n in names):
        try:
            import trl  # noqa: F401
        except ImportError:
            parser.error('trl_grpo needs TRL: pip install -e ".[bench]" (or leave it out with --only)')
    if args.memory_limit_gb is None:
        args.memory_limit_gb = max(1.0, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 - 2)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    s = settings(args, str(policy_path(SHAPE_SIZES[args.size])))  # built once, in the benchmark cache
    runs = {}
    for name in names:
        print(f"running {name} ...", flush=True)
        result = run_worker(name, s)
        if result["status"] == "ok":
            rows = run_settings(name, s)["prompts_per_step"] * run_settings(name, s)["num_generations"]
            result["tokens_per_row"] = result["update_tokens_per_step"] / rows / (2 if RUNS[name][1] == "ppo" else 1)
        runs[name] = {**report_row(result, predicted(name, s, device)), "settings": RUNS[name][3]}
        if runs[name]["status"] == "ok" and runs[name]["predicted_memory_mb"]:
            runs[name]["peak_over_predicted"] = runs[name]["peak_memory_mb"] / runs[name]["predicted_memory_mb"]
    print_report(s, runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": {**s, "device": device}, "runs": runs}, indent=2))
        print(f"\nwrote {args.json}")
    failed = [name for name, run in runs.items() if run["status"] == "failed"]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (their output is above)")


if __name__ == "__main__":
    main()
