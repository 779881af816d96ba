"""llm_rl against TRL on the same work: GRPO (TRL's GRPOTrainer) and PPO (TRL 1.12's PPOTrainer).

    python benchmarks/vs_trl.py                              # both sizes, GRPO and PPO
    python benchmarks/vs_trl.py --steps 3 --only grpo --sizes tiny
    python benchmarks/vs_trl.py --json vs_trl.json
    python benchmarks/vs_trl.py --precision bf16   # bf16 autocast on both sides (TRL's default)
    python benchmarks/vs_trl.py --sizes 30m --only grpo --rollout_dtype bfloat16   # llm_rl samples from a bf16 copy

Needs the bench extra: ``pip install -e ".[bench]"`` (TRL for GRPO) and, for the PPO half,
TRL 1.12.0 beside it — the last release with a PPO trainer (removed in 1.13) — in a folder
of your choice, named by ``$LLM_RL_TRL_PPO_DIR`` or ``--trl_ppo_dir`` (there is no default)::

    pip install --no-deps --target DIR trl==1.12.0 && export LLM_RL_TRL_PPO_DIR=DIR

It goes on ``PYTHONPATH`` of the TRL PPO process only; ``--only grpo`` needs no such folder.

Each (framework, algorithm, size) trains in its own process with the same torch thread
count, on the same model files, prompts, reward, batch, lengths, learning rate and
steps; the settings are printed field by field with each framework's own name for them.
Completions are forced to ``max_completion_length`` on both sides (``min_new_tokens``;
TRL's PPO has no stop token), so neither side wins by stopping early. Figures are
medians over the steps after ``--warmup`` (see ``_common.StepClock`` for what each phase
covers). On CPU, memory is the process's peak RSS (Linux); on CUDA, the allocator's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import CLOCKS, SIZES, StepClock, default_threads, parameter_count, policy_path, reward_model_path, set_threads, thread_env  # noqa: E402
from flops import format_flops, matmul_flops, update_flops  # noqa: E402

TRL_PPO_DIR_ENV = "LLM_RL_TRL_PPO_DIR"  # the folder TRL 1.12.0 was pip-installed into (--target); no default
DATASET_SIZE, DATASET_SEED = 4000, 0
SHARED_HEAD = "llm_rl_shared_value_head"  # the third PPO run: llm_rl's default critic


# ---------------------------------------------------------------------------- matched settings
PRECISIONS = {
    "fp32": "float32 weights and compute",
    "bf16": "float32 weights, bf16 autocast (accelerate mixed_precision='bf16'; TRL's default)",
}


def settings(algo: str, size_name: str, steps: int, threads: int, precision: str = "fp32") -> dict:
    """The one set of values both frameworks are given for ``algo`` at ``size_name``."""
    size = SIZES[size_name]
    common = {
        "model": str(policy_path(size)),
        "prompts": f"arithmetic_dataset({DATASET_SIZE}, seed={DATASET_SEED})",
        "max_completion_length": size.completion_length,
        "min_completion_length": size.completion_length,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "learning_rate": 1e-5,
        "lr_schedule": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "optimizer": "torch.optim.AdamW(betas=(0.9, 0.999), fused=True)",
        "precision": PRECISIONS[precision],
        "gradient_checkpointing": False,
        "gradient_accumulation_steps": 1,
        "total_steps": steps,
        "seed": 0,
        "torch_threads": threads,
    }
    if algo == "grpo":
        return {
            **common,
            "reward": "reward_models.math_correctness (function)",
            "prompts_per_step": size.grpo_prompts,
            "num_generations": size.grpo_generations,
            "beta": 0.04,
            "kl_estimator": "k3, in the loss",
            "epsilon": 0.2,
            "loss_aggregation": "token mean over the batch (DAPO)",
            "scale_rewards": "group",
            "num_iterations": 1,
            "max_grad_norm": 1.0,
        }
    return {
        **common,
        "reward": str(reward_model_path(size)),
        "value_model": "separate critic, same backbone size",
        "prompts_per_step": size.ppo_prompts,
        "num_generations": 1,
        "num_ppo_epochs": 2,
        "num_mini_batches": 1,
        "kl_coef": 0.05,
        "kl_estimator": "k1, in the reward",
        "cliprange": 0.2,
        "cliprange_value": 0.2,
        "vf_coef": 0.1,
        "gamma": 1.0,
        "lam": 0.95,
        "whiten_rewards": False,
        "max_grad_norm": "none (TRL's PPO loop does not clip)",
    }


# Which field of each framework's config carries each setting (printed beside the values).
FIELD_NAMES = {
    "grpo": {
        "prompts_per_step": ("per_device_batch_size", "per_device_train_batch_size / num_generations"),
        "num_generations": ("num_generations", "num_generations"),
        "max_completion_length": ("max_completion_length", "max_completion_length"),
        "min_completion_length": ("min_completion_length", "generation_kwargs['min_new_tokens']"),
        "beta": ("beta", "beta"),
        "epsilon": ("epsilon_low (epsilon_high=None)", "epsilon (epsilon_high=None)"),
        "loss_aggregation": ("loss_aggregation='token_mean'", "loss_type='dapo'"),
        "scale_rewards": ("scale_rewards", "scale_rewards"),
        "num_iterations": ("num_iterations", "num_iterations"),
        "optimizer": ("(built in)", "optim='adamw_torch_fused' (its default)"),
    },
    "ppo": {
        "prompts_per_step": ("per_device_batch_size", "per_device_train_batch_size"),
        "num_generations": ("num_generations", "(one per query)"),
        "max_completion_length": ("max_completion_length", "response_length"),
        "min_completion_length": ("min_completion_length", "(no stop token: always response_length)"),
        "reward": ("reward_funcs=[path] (LearnedReward)", "reward_model="),
        "value_model": ("value_model=policy path", "value_model=reward-model copy"),
        "num_ppo_epochs": ("num_ppo_epochs", "num_ppo_epochs"),
        "num_mini_batches": ("num_mini_batches", "num_mini_batches"),
        "kl_coef": ("kl_coef", "kl_coef"),
        "max_grad_norm": ("max_grad_norm=0", "(none)"),
        "optimizer": ("(built in)", "optim='adamw_torch_fused' (its default)"),
    },
}


# ---------------------------------------------------------------------------- workers
def bf16(s: dict) -> bool:
    return s["precision"] == PRECISIONS["bf16"]


def prompt_dataset():
    from llm_rl.data.arithmetic import arithmetic_dataset

    return arithmetic_dataset(DATASET_SIZE, seed=DATASET_SEED)


def run_llm_rl(algo: str, s: dict, clock: StepClock, output_dir: str, shared_value_head: bool = False,
               config_overrides: dict | None = None, train_dataset=None, reward_funcs: list | None = None) -> dict:
    """``config_overrides``: more config fields (benchmarks/real_shape.py: LoRA, checkpointing); ``s["rollout_dtype"]``
    when set (``--rollout_dtype``);
    ``train_dataset`` / ``reward_funcs``: instead of the arithmetic prompts / the settings' reward."""
    from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
    from llm_rl.rollout import engine
    from reward_models import math_correctness

    train_dataset = prompt_dataset() if train_dataset is None else train_dataset

    common = dict(
        output_dir=output_dir, overwrite_output_dir=True, per_device_batch_size=s["prompts_per_step"],
        num_generations=s["num_generations"], max_completion_length=s["max_completion_length"],
        min_completion_length=s["min_completion_length"], temperature=s["temperature"], top_p=s["top_p"],
        top_k=s["top_k"], learning_rate=s["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_steps=s["total_steps"], seed=s["seed"], bf16=bf16(s), logging_steps=1,
        **({"rollout_dtype": s["rollout_dtype"]} if s.get("rollout_dtype") else {}), **(config_overrides or {}),
    )  # fmt: skip
    if algo == "grpo":
        passes = s["num_iterations"]
        config = GRPOConfig(
            **common, beta=s["beta"], kl_estimator="k3", kl_in="loss", epsilon_low=s["epsilon"], epsilon_high=None,
            loss_aggregation="token_mean", scale_rewards="group", num_iterations=s["num_iterations"],
            max_grad_norm=s["max_grad_norm"],
        )  # fmt: skip
        trainer = GRPOTrainer(model=s["model"], reward_funcs=reward_funcs or [math_correctness], args=config,
                              train_dataset=train_dataset)
    else:
        passes = s["num_ppo_epochs"]
        config = PPOConfig(
            **common, num_ppo_epochs=s["num_ppo_epochs"], num_mini_batches=s["num_mini_batches"], kl_coef=s["kl_coef"],
            kl_estimator="k1", cliprange=s["cliprange"], cliprange_value=s["cliprange_value"], vf_coef=s["vf_coef"],
            gamma=s["gamma"], lam=s["lam"], whiten_rewards=False, max_grad_norm=0.0,
        )  # fmt: skip
        trainer = PPOTrainer(
            model=s["model"], reward_funcs=reward_funcs or [s["reward"]], args=config, train_dataset=train_dataset,
            value_model=None if shared_value_head else s["model"],  # None: the head reads the policy's hidden state
        )

    # --- instrumentation: step start, generation, first training forward ---
    timed_generate = clock.timed_generation(engine.generate_rollout)

    def generate_rollout(*args, **kwargs):
        rollout = timed_generate(*args, **kwargs)
        clock.count_tokens(rollout.completion_mask.sum(), rollout.attention_mask.sum() * passes)
        return rollout

    engine.generate_rollout = generate_rollout  # what the trainer's rollout engine calls
    update_entry = trainer.update_entry
    step, first_update_call = trainer.training_step, getattr(trainer, update_entry)
    trainer.training_step = lambda: (clock.step_start(), step())[1]
    setattr(trainer, update_entry, lambda *a: (clock.update_start(), first_update_call(*a))[1])
    trainer.train()
    import llm_rl

    return {"framework": "llm_rl", "version": getattr(llm_rl, "__version__", "0.1.0"), "dtype": str(trainer.lm.dtype)}


def run_trl_grpo(s: dict, clock: StepClock, output_dir: str, train_dataset=None, gradient_checkpointing: bool = False) -> dict:
    """TRL's GRPOTrainer at the settings `s`; `gradient_checkpointing` True is TRL 1.16's own default."""
    import trl
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reward_models import math_correctness

    G = s["num_generations"]
    config = GRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=s["prompts_per_step"] * G, gradient_accumulation_steps=1,
        num_generations=G, max_completion_length=s["max_completion_length"],
        generation_kwargs={"min_new_tokens": s["min_completion_length"]}, temperature=s["temperature"],
        top_p=s["top_p"], top_k=s["top_k"], learning_rate=s["learning_rate"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, optim="adamw_torch_fused", max_steps=s["total_steps"], beta=s["beta"],
        epsilon=s["epsilon"], loss_type="dapo", scale_rewards="group", num_iterations=s["num_iterations"],
        max_grad_norm=s["max_grad_norm"], bf16=bf16(s), fp16=False, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=gradient_checkpointing, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=s["seed"], dataloader_num_workers=0,
    )  # fmt: skip

    class StepStart(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.step_start()

    trainer = GRPOTrainer(
        model=s["model"], reward_funcs=math_correctness, args=config, callbacks=[StepStart()],
        train_dataset=prompt_dataset() if train_dataset is None else train_dataset,
    )
    trainer._generate_single_turn = clock.timed_generation(trainer._generate_single_turn)
    generate_and_score, compute_loss = trainer._generate_and_score_completions, trainer.compute_loss

    def counted(batch):
        out = generate_and_score(batch)
        completion = out["completion_mask"].sum()
        clock.count_tokens(completion, (out["prompt_mask"].sum() + completion) * s["num_iterations"])
        return out

    trainer._generate_and_score_completions = counted
    trainer.compute_loss = lambda *a, **k: (clock.update_start(), compute_loss(*a, **k))[1]
    trainer.train()
    return {"framework": "trl", "version": trl.__version__, "dtype": str(trainer.model.dtype)}


def run_trl_ppo(s: dict, clock: StepClock, output_dir: str) -> dict:
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    tokenizer = AutoTokenizer.from_pretrained(s["model"])
    assert tokenizer.pad_token_id != tokenizer.eos_token_id, "TRL's PPO needs a pad token distinct from EOS"
    tokenizer.padding_side = "left"
    dataset = prompt_dataset().map(
        lambda row: tokenizer(row["prompt"], add_special_tokens=False), remove_columns=["prompt", "answer"]
    )
    P = s["prompts_per_step"]
    config = PPOConfig(
        output_dir=output_dir, per_device_train_batch_size=P, gradient_accumulation_steps=1,
        num_mini_batches=s["num_mini_batches"], num_ppo_epochs=s["num_ppo_epochs"], local_rollout_forward_batch_size=P,
        total_episodes=s["total_steps"] * P, response_length=s["max_completion_length"], stop_token_id=None,
        temperature=s["temperature"], learning_rate=s["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, optim="adamw_torch_fused", kl_coef=s["kl_coef"], kl_estimator="k1", cliprange=s["cliprange"],
        cliprange_value=s["cliprange_value"], vf_coef=s["vf_coef"], gamma=s["gamma"], lam=s["lam"],
        whiten_rewards=False, num_sample_generations=0, bf16=bf16(s), fp16=False, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        seed=s["seed"],
    )  # fmt: skip

    class StepEnd(TrainerCallback):  # TRL's PPO loop calls on_step_end only: a step's end is the next one's start
        def on_train_begin(self, args, state, control, **kwargs):
            clock.step_start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_start()

    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(s["model"]),
        ref_model=None,  # TRL copies the policy, as llm_rl does
        reward_model=AutoModelForSequenceClassification.from_pretrained(s["reward"]),
        value_model=AutoModelForSequenceClassification.from_pretrained(s["reward"]),
        train_dataset=dataset,
        eval_dataset=dataset.select(range(P)),
        callbacks=[StepEnd()],
    )
    timed_generate = clock.timed_generation(module.batch_generation)

    def batch_generation(model, queries, *args, **kwargs):
        query_responses, logits = timed_generate(model, queries, *args, **kwargs)
        generated = query_responses[:, queries.shape[1] :].numel()
        clock.count_tokens(generated, (query_responses != tokenizer.pad_token_id).sum() * s["num_ppo_epochs"])
        return query_responses, logits

    module.batch_generation = batch_generation
    trainer.model.register_forward_pre_hook(lambda *_: clock.update_start())  # only the update calls the wrapper
    trainer.train()
    return {"framework": "trl", "version": trl.__version__, "dtype": str(trainer.policy_model.dtype)}


def worker(framework: str, algo: str, s: dict, warmup: int, steps: int, clock_kind: str, out: str) -> None:
    set_threads(s["torch_threads"])
    clock = StepClock(clock_kind)
    with tempfile.TemporaryDirectory(prefix=f"bench-{framework}-{algo}-") as output_dir:
        if framework.startswith("llm_rl"):
            meta = run_llm_rl(algo, s, clock, output_dir, shared_value_head=framework == SHARED_HEAD)
        elif algo == "grpo":
            meta = run_trl_grpo(s, clock, output_dir)
        else:
            meta = run_trl_ppo(s, clock, output_dir)
    Path(out).write_text(json.dumps({**meta, **clock.summary(warmup, steps)}))


# ---------------------------------------------------------------------------- the driver
def run_worker(framework: str, algo: str, s: dict, warmup: int, steps: int, clock: str, trl_ppo_dir: str) -> dict:
    env = thread_env(s["torch_threads"])
    if framework == "trl" and algo == "ppo":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (trl_ppo_dir, env.get("PYTHONPATH")) if p)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, algo, json.dumps(s),
               "--warmup", str(warmup), "--steps", str(steps), "--clock", clock, "--worker_out", out.name]  # fmt: skip
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stdout[-4000:] + result.stderr[-8000:])
            raise SystemExit(f"{framework} {algo} failed (exit {result.returncode}); its output is above")
        return json.loads(Path(out.name).read_text())


def check_trl(algos: list[str], trl_ppo_dir: str) -> None:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit('TRL is not installed: pip install -e ".[bench]" (TRL is a benchmark extra only)') from None
    if "ppo" in algos and not (Path(trl_ppo_dir) / "trl" / "experimental" / "ppo").is_dir():
        raise SystemExit(
            f"TRL 1.12.0 (the last release with a PPO trainer) is not in {trl_ppo_dir!r}. Install it with\n"
            f"    pip install --no-deps --target {trl_ppo_dir} trl==1.12.0\n"
            "or pass --trl_ppo_dir DIR (or set LLM_RL_TRL_PPO_DIR), or run --only grpo."
        )


def with_flops(result: dict, trained_parameters: int, peak: float) -> dict:
    achieved = update_flops(trained_parameters, result["update_tokens_per_second"])
    return {**result, "trained_parameters": trained_parameters, "update_flops_per_second": achieved,
            "update_flops_fraction_of_peak": achieved / peak}  # fmt: skip


ROWS = [  # (label, key, format)
    ("step seconds (median)", "step_seconds", "{:.3f}"),
    ("  generation seconds", "generation_seconds", "{:.3f}"),
    ("  update seconds", "update_seconds", "{:.3f}"),
    ("  other seconds (reward, ref/old log-probs)", "other_seconds", "{:.3f}"),
    ("generated tokens / s", "generated_tokens_per_second", "{:.0f}"),
    ("update tokens / s", "update_tokens_per_second", "{:.0f}"),
    ("peak memory MB", "peak_memory_mb", "{:.0f}"),
    ("  rise during the steps MB", "train_extra_memory_mb", "{:.0f}"),
    ("update GFLOP/s", "update_flops_per_second", "{:.2f}"),
    ("  share of matmul peak", "update_flops_fraction_of_peak", "{:.1%}"),
]


def print_table(algo: str, size_name: str, s: dict, ours: dict, theirs: dict, params: int, extra: dict | None = None) -> dict:
    """The side-by-side table; ``extra``: llm_rl's PPO with its default shared value head, a third column."""
    size = SIZES[size_name]
    rows = s["prompts_per_step"] * s["num_generations"]
    print(f"\n{algo.upper()}, {size_name} model ({params / 1e6:.1f}M parameters): {s['prompts_per_step']} prompts x "
          f"{s['num_generations']} completions x {size.completion_length} tokens = {rows} completions per step; "
          f"{ours['steps_measured']} measured steps, {ours['clock']} clock")  # fmt: skip
    head = f"{'':<44} {'llm_rl':>12} {'TRL ' + theirs['version']:>12} {'llm_rl/TRL':>11}"
    print(head + (f" {'llm_rl shared':>14} {'shared/TRL':>11}" if extra else ""))
    ratios, extra_ratios = {}, {}
    for label, key, fmt in ROWS:
        scale = 1e-9 if key == "update_flops_per_second" else 1.0
        a, b = ours[key] * scale, theirs[key] * scale
        ratios[key] = a / b if b else float("nan")
        shown = "" if key == "update_flops_fraction_of_peak" else f"{ratios[key]:.2f}x"
        line = f"{label:<44} {fmt.format(a):>12} {fmt.format(b):>12} {shown:>11}"
        if extra:
            c = extra[key] * scale
            extra_ratios[key] = c / b if b else float("nan")
            line += f" {fmt.format(c):>14} {'' if not shown else f'{extra_ratios[key]:.2f}x':>11}"
        print(line)
    print(f"{'memory measured as':<44} {ours['memory_kind']:>12} {theirs['memory_kind']:>12}")
    if extra:
        print("llm_rl shared: llm_rl's default PPO critic, a value head on the policy's last hidden state (one backbone "
              "instead of two;\n  TRL 1.12's PPOTrainer has no such option), everything else as in the llm_rl column")
    print("update GFLOP/s counts 6 x parameters x every row's prompt + completion tokens; llm_rl runs a group's "
          "prompt once (GRPO),\n  so its rate counts work it did not need to do and can pass the matmul peak")
    return ratios, extra_ratios


def print_settings(algo: str, s: dict) -> None:
    names = FIELD_NAMES[algo]
    print(f"\n{algo.upper()} settings, the same on both sides (llm_rl field | TRL field where the names differ):")
    for key, value in s.items():
        ours, theirs = names.get(key, (key, key))
        note = "" if ours == theirs == key else f"   [llm_rl: {ours} | TRL: {theirs}]"
        print(f"  {key:<28} {value}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not measured")
    parser.add_argument("--only", choices=["grpo", "ppo"], default=None, help="run one algorithm")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="model sizes to run")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads in every process")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or process CPU time (use with --threads 1 on a machine shared with other jobs)")
    parser.add_argument("--rollout_dtype", choices=["float32", "bfloat16"], default=None,
                        help="llm_rl generates from a copy of the policy in this dtype (RLConfig.rollout_dtype); TRL as before")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                        help="fp32, or bf16 autocast over float32 weights on both sides (TRL's own default)")
    parser.add_argument("--no_ppo_shared_head", dest="ppo_shared_head", action="store_false",
                        help="skip the extra run of llm_rl's PPO with its default shared value head")
    parser.add_argument("--trl_ppo_dir", default=os.environ.get(TRL_PPO_DIR_ENV),
                        help=f"folder holding TRL 1.12.0 (pip install --no-deps --target DIR trl==1.12.0); default ${TRL_PPO_DIR_ENV}")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "ALGO", "SETTINGS"), help=argparse.SUPPRESS)
    parser.add_argument("--worker_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, algo, s = args.worker
        worker(framework, algo, json.loads(s), args.warmup, args.steps, args.clock, args.worker_out)
        return

    algos = [args.only] if args.only else ["grpo", "ppo"]
    if "ppo" in algos and not args.trl_ppo_dir:
        parser.error(
            f"the PPO half needs TRL 1.12.0 (the last release with a PPO trainer) in a folder of its own: "
            f"pip install --no-deps --target DIR trl==1.12.0, then export {TRL_PPO_DIR_ENV}=DIR or pass --trl_ppo_dir DIR "
            f"(or run --only grpo)"
        )
    check_trl(algos, args.trl_ppo_dir)
    set_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_flops(timer=CLOCKS[args.clock], dtype=dtype)
    print(f"machine: {str(dtype).removeprefix('torch.')} matmul peak {format_flops(peak)} at {args.threads} torch threads "
          f"(1024x1024 torch.mm, best of 5, {args.clock} clock)")
    # + 1: a step is timed up to the next one's start, so the last step of a run cannot be timed
    total_steps = args.warmup + args.steps + 1
    by_size = {}
    for size_name in args.sizes:
        size_report = {}
        for algo in algos:
            s = settings(algo, size_name, total_steps, args.threads, args.precision)
            if args.rollout_dtype:  # llm_rl's side only: TRL has no such option
                s["rollout_dtype"] = args.rollout_dtype
            params = parameter_count(s["model"])
            trained = params if algo == "grpo" else 2 * params  # PPO also trains a critic of the same size
            frameworks = ["llm_rl", "trl"] + ([SHARED_HEAD] if algo == "ppo" and args.ppo_shared_head else [])
            results = {}
            for fw in frameworks:
                result = run_worker(fw, algo, s, args.warmup, args.steps, args.clock, args.trl_ppo_dir)
                results[fw] = with_flops(result, params if fw == SHARED_HEAD else trained, peak)
            print_settings(algo, s)
            ratios, extra_ratios = print_table(algo, size_name, s, results["llm_rl"], results["trl"], params, results.get(SHARED_HEAD))
            size_report[algo] = {**results, "ratio": ratios}
            if extra_ratios:
                size_report[algo]["ratio_shared_value_head"] = extra_ratios
            size_report.setdefault("settings", {})[algo] = s
            print(f"=> {algo.upper()} {size_name}: llm_rl takes {ratios['step_seconds']:.2f}x TRL's seconds per step "
                  f"and {ratios['peak_memory_mb']:.2f}x its peak memory", flush=True)  # fmt: skip
            if extra_ratios:
                print(f"=> {algo.upper()} {size_name}, llm_rl with its shared value head: {extra_ratios['step_seconds']:.2f}x "
                      f"TRL's seconds per step and {extra_ratios['peak_memory_mb']:.2f}x its peak memory", flush=True)  # fmt: skip
        by_size[size_name] = size_report
    if args.json:
        first = by_size[args.sizes[0]]  # the documented shape, for the first size; every size under by_size
        report = {**first, "size": args.sizes[0], "matmul_peak_flops": peak, "threads": args.threads, "by_size": by_size}
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
