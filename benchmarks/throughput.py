"""Where llm_rl's GRPO step goes, phase by phase, and how each phase grows with G and completion length.

    python benchmarks/throughput.py                   # G in 2 4 8 16, completion length in 16 64 256
    python benchmarks/throughput.py --steps 1 --group_sizes 2 4 --lengths 16
    python benchmarks/throughput.py --threads 1 --clock cpu      # on a machine shared with other jobs

Phases of one step (the wrapped functions are the trainer's own):
    generation  ``generate_rollout``: prefill once per prompt, then G samples per prompt
    ref/old     ``logprobs_no_grad``: the reference model's log-probs (one no-grad forward;
                with ``num_iterations == 1`` the old log-probs are the training forward's)
    reward      ``score``: decoding and the reward functions
    update      from the first training forward to the end of the step (forward, backward,
                optimizer step, metrics)
Each phase should cost in proportion to the tokens it handles: seconds per generated token
stay flat as G grows, and "prefill tokens per prompt" (positions the model ran in the
generation calls that took more than one token) does not grow with G.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import CLOCKS, default_threads, parameter_count, set_threads  # noqa: E402
from flops import format_flops, matmul_flops, update_flops  # noqa: E402

PHASES = ("generation", "ref_old", "reward", "update")


class PhaseTimer:
    """Seconds per phase per step, from wrappers around the trainer's functions."""

    def __init__(self, trainer, module, now):
        self.now, self.steps = now, []
        self.prefill_positions, self.generating = 0, False
        generate, score, logprobs = module.generate_rollout, trainer.score, trainer.logprobs_no_grad
        step, accumulate = trainer.training_step, trainer._accumulate

        def timed(phase, fn):
            def wrapper(*args, **kwargs):
                start = self.now()
                out = fn(*args, **kwargs)
                self.current[phase] += self.now() - start
                return out

            return wrapper

        def training_step():
            self.current = dict.fromkeys(PHASES, 0.0) | {"update_start": None}
            start = self.now()
            metrics = step()
            end = self.now()
            self.current["update"] = end - self.current.pop("update_start")
            self.current["step"] = end - start
            self.steps.append(self.current)
            return metrics

        def first_accumulate(*args):
            if self.current["update_start"] is None:
                self.current["update_start"] = self.now()
            return accumulate(*args)

        def count_prefill(module_, args, kwargs):  # positions of multi-token calls while generating: the prefill
            ids = kwargs.get("input_ids", args[0] if args else None)
            if self.generating and ids is not None and ids.shape[1] > 1:
                self.prefill_positions += ids.numel()

        def generating(*args, **kwargs):
            self.generating = True
            try:
                return generate(*args, **kwargs)
            finally:
                self.generating = False

        module.generate_rollout = timed("generation", generating)
        trainer.score = timed("reward", score)
        trainer.logprobs_no_grad = timed("ref_old", logprobs)
        trainer.training_step, trainer._accumulate = training_step, first_accumulate
        trainer.lm.register_forward_pre_hook(count_prefill, with_kwargs=True)


def run_config(G: int, C: int, prompts: int, steps: int, warmup: int, model: str, now) -> dict:
    from llm_rl import GRPOConfig, GRPOTrainer
    from llm_rl.data.arithmetic import arithmetic_dataset
    from llm_rl.rollout import engine
    from reward_models import math_correctness

    original_generate = engine.generate_rollout
    with tempfile.TemporaryDirectory() as output_dir:
        config = GRPOConfig(
            output_dir=output_dir, overwrite_output_dir=True, per_device_batch_size=prompts, num_generations=G,
            max_completion_length=C, min_completion_length=C, learning_rate=1e-5, lr_scheduler_type="constant",
            warmup_steps=0, beta=0.04, num_iterations=1, max_steps=warmup + steps, seed=0, bf16=False,
        )  # fmt: skip
        trainer = GRPOTrainer(model=model, reward_funcs=[math_correctness], args=config,
                              train_dataset=arithmetic_dataset(1000, seed=0))  # fmt: skip
        timer = PhaseTimer(trainer, engine, now)  # the module whose generate_rollout the trainer's engine calls
        try:
            for i in range(warmup + steps):
                if i == warmup:  # count prefill positions over the measured steps only
                    timer.prefill_positions = 0
                trainer.training_step()
                trainer.step += 1
        finally:
            engine.generate_rollout = original_generate
    measured = timer.steps[warmup:]
    median = {key: statistics.median(s[key] for s in measured) for key in (*PHASES, "step")}
    B = prompts * G
    return {
        "num_generations": G, "completion_length": C, "prompts": prompts, "rows": B, **median,
        "seconds_per_generated_token": median["generation"] / (B * C),
        "step_seconds_per_completion_token": median["step"] / (B * C),
        "prefill_tokens_per_prompt": timer.prefill_positions / (prompts * steps),
    }  # fmt: skip


def print_rows(title: str, rows: list[dict], parameters: int, peak: float, prompt_tokens: float) -> None:
    print(f"\n{title}")
    header = (f"{'G':>3} {'C':>4} {'rows':>5} {'gen s':>7} {'ref s':>7} {'reward s':>8} {'update s':>8} {'step s':>7} "
              f"{'us/gen tok':>10} {'us/step tok':>11} {'prefill/prompt':>14} {'update GFLOP/s':>14} {'of peak':>7}")  # fmt: skip
    print(header)
    for r in rows:
        tokens = r["rows"] * (prompt_tokens + r["completion_length"])  # what the training forward handles
        achieved = update_flops(parameters, tokens) / r["update"]
        r["update_flops_per_second"], r["update_flops_fraction_of_peak"] = achieved, achieved / peak
        print(f"{r['num_generations']:>3} {r['completion_length']:>4} {r['rows']:>5} {r['generation']:>7.3f} "
              f"{r['ref_old']:>7.3f} {r['reward']:>8.3f} {r['update']:>8.3f} {r['step']:>7.3f} "
              f"{r['seconds_per_generated_token'] * 1e6:>10.1f} {r['step_seconds_per_completion_token'] * 1e6:>11.1f} "
              f"{r['prefill_tokens_per_prompt']:>14.1f} {achieved / 1e9:>14.2f} {achieved / peak:>7.1%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="policy (default: the embedded tiny model)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group_sizes", type=int, nargs="+", default=[2, 4, 8, 16], help="G values (at --fixed_length)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="completion lengths (at --fixed_g)")
    parser.add_argument("--fixed_length", type=int, default=16, help="completion length of the G sweep")
    parser.add_argument("--fixed_g", type=int, default=8, help="G of the completion-length sweep")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall", help="wall, or process CPU time (shared machine)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_threads(args.threads)
    from llm_rl.data.arithmetic import arithmetic_dataset
    from llm_rl.models.loading import load_tokenizer, resolve_model_path

    model = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model)
    prompt_tokens = statistics.mean(len(tokenizer(p, add_special_tokens=False)["input_ids"])
                                    for p in arithmetic_dataset(1000, seed=0)["prompt"])  # fmt: skip
    parameters, now = parameter_count(model), CLOCKS[args.clock]
    peak = matmul_flops(timer=now)
    print(f"llm_rl GRPO phases, {parameters / 1e6:.1f}M-parameter model, {args.prompts} prompts per step "
          f"(~{prompt_tokens:.1f} prompt tokens each), beta=0.04, num_iterations=1; {args.threads} threads, "
          f"{args.clock} clock; medians of {args.steps} steps after {args.warmup} warm-up")  # fmt: skip
    print(f"machine: float32 matmul peak {format_flops(peak)}; update FLOPs = 6 x parameters x (prompt + completion) tokens")
    by_g = [run_config(G, args.fixed_length, args.prompts, args.steps, args.warmup, model, now) for G in args.group_sizes]
    print_rows(f"growth with the group size G (completion length {args.fixed_length}):", by_g, parameters, peak, prompt_tokens)
    by_c = [run_config(args.fixed_g, C, args.prompts, args.steps, args.warmup, model, now) for C in args.lengths]
    print_rows(f"growth with the completion length C (G = {args.fixed_g}):", by_c, parameters, peak, prompt_tokens)
    print("\nus/gen tok: generation microseconds per generated token; us/step tok: step microseconds per completion token;"
          "\nprefill/prompt: positions run in multi-token generation calls, per prompt (the prompt minus its last token)")
    if args.json:
        report = {"parameters": parameters, "matmul_peak_flops": peak, "threads": args.threads, "clock": args.clock,
                  "by_group_size": by_g, "by_completion_length": by_c}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
