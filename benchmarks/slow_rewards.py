"""Step time with slow rewards: sequential calls against async and thread-pool calls, side by side.

    python benchmarks/slow_rewards.py                     # 50 ms sleeps, 8 prompts x 4 completions
    python benchmarks/slow_rewards.py --sleep 0.05 --steps 4 --repeats 3 --workers 8

Two slow rewards stand in for a remote verifier or an LLM judge (they sleep, so they cost
wall time, not CPU):

    per_batch    4 reward functions, each sleeping ``--sleep`` s per call (one call per batch)
    per_sample   1 verifier sleeping ``--sleep`` s per completion (async: the sleeps are
                 awaited together; threads: the batch is cut into ``--workers`` parts of whole groups)

and each is run in three ways: ``sequential`` (plain functions, ``reward_num_workers=0``),
``async`` (the same functions as ``async def``), ``threads`` (plain, ``reward_num_workers``).
A ``no_sleep`` run gives the step without reward cost. Runs of every mode are interleaved
(each repeat runs every mode once), on one torch thread, so a mode is not favoured by
whatever else the machine runs meanwhile. Times are wall clock (sleeping uses no CPU):
``step`` is the trainer's ``step_seconds``, ``score`` the time inside ``BaseRLTrainer.score``;
both are medians over the steps after the first of every repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def slow_rewards(kind: str, sleep: float, asynchronous: bool) -> list:
    """The reward functions of one scenario; all give reward 0.5, so the training itself is the same."""

    def per_call(k):
        if asynchronous:
            async def reward(prompts, completions, **kwargs):
                await asyncio.sleep(sleep)
                return [0.5] * len(completions)
        else:
            def reward(prompts, completions, **kwargs):
                time.sleep(sleep)
                return [0.5] * len(completions)
        reward.__name__ = f"slow_{k}"
        return reward

    if kind == "per_batch":
        return [per_call(k) for k in range(4)]
    if asynchronous:
        async def verifier(prompts, completions, **kwargs):
            async def one(_):
                await asyncio.sleep(sleep)
                return 0.5

            return list(await asyncio.gather(*(one(c) for c in completions)))
    else:
        def verifier(prompts, completions, **kwargs):
            out = []
            for _ in completions:
                time.sleep(sleep)
                out.append(0.5)
            return out
    return [verifier]


def run_once(model_dir: str, funcs: list, workers: int, args, out: Path) -> tuple[list[float], list[float]]:
    """Step and score seconds of one short run."""
    from llm_rl import GRPOConfig, GRPOTrainer
    from llm_rl.data import arithmetic_dataset

    config = GRPOConfig(output_dir=str(out), max_steps=args.steps, per_device_batch_size=args.prompts,
                        num_generations=args.generations, max_completion_length=8, reward_num_workers=workers,
                        report_to="none")
    trainer = GRPOTrainer(model_dir, funcs, args=config, train_dataset=arithmetic_dataset(256, seed=0))
    score_seconds, real_score = [], trainer.score

    def timed_score(*a, **k):
        start = time.perf_counter()
        try:
            return real_score(*a, **k)
        finally:
            score_seconds.append(time.perf_counter() - start)

    trainer.score = timed_score
    trainer.train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step_seconds"] for r in rows if "step_seconds" in r][1:], score_seconds[1:]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds each slow call (or sample) sleeps")
    parser.add_argument("--steps", type=int, default=4, help="steps per run; the first is dropped as warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="runs of every mode, interleaved")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8, help="reward_num_workers of the threads mode")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded tiny model)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llm_rl.models.tiny import ensure_tiny_model

    model_dir = args.model or str(ensure_tiny_model())
    modes = {"no_sleep": ("per_batch", 0.0, False, 0)}
    for kind in ("per_batch", "per_sample"):
        modes[f"{kind}/sequential"] = (kind, args.sleep, False, 0)
        modes[f"{kind}/async"] = (kind, args.sleep, True, 0)
        modes[f"{kind}/threads"] = (kind, args.sleep, False, args.workers)
    times = {name: ([], []) for name in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, (kind, sleep, asynchronous, workers) in modes.items():
                out = Path(tmp) / f"{name.replace('/', '_')}-{repeat}"
                steps, scores = run_once(model_dir, slow_rewards(kind, sleep, asynchronous), workers, args, out)
                times[name][0].extend(steps)
                times[name][1].extend(scores)

    batch = args.prompts * args.generations
    print(f"GRPO step, {args.prompts} prompts x {args.generations} completions = {batch} samples, tiny model, 1 thread; "
          f"sleep {args.sleep * 1000:.0f} ms; medians over {args.repeats} x {args.steps - 1} steps (wall clock)")
    print(f"{'mode':<24}{'step s':>9}{'score s':>10}   reward cost (ideal)")
    waves = -(-4 // args.workers)  # 4 functions, max(1, workers // 4) parts each: one wave when workers >= 4
    ideal = {"per_batch/sequential": 4 * args.sleep, "per_batch/async": args.sleep, "per_batch/threads": waves * args.sleep,
             "per_sample/sequential": batch * args.sleep, "per_sample/async": args.sleep,
             "per_sample/threads": -(-batch // args.workers) * args.sleep, "no_sleep": 0.0}
    for name, (steps, scores) in times.items():
        print(f"{name:<24}{statistics.median(steps):>9.3f}{statistics.median(scores):>10.3f}   {ideal[name]:.3f}")


if __name__ == "__main__":
    main()
