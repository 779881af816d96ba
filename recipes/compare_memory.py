"""PPO or GRPO? Their memory, side by side: predicted from shapes, and measured over a few steps.

    python recipes/compare_memory.py                                      # the tiny model, on this machine
    python recipes/compare_memory.py --hidden_size 512 --num_layers 12    # a ~50M-parameter Qwen2 from a config
    python recipes/compare_memory.py --predict_only --model qwen2.5-7b --use_peft   # from the config alone
    accelerate launch recipes/compare_memory.py                           # the main process measures one device
    python recipes/compare_memory.py --config recipes/configs/compare_memory.yaml   # flags override the file

Same model, prompts per step and sequence lengths for every trainer: PPO with a separate
critic and with a value head on the policy (``--ppo_value``), GRPO with no critic and G
completions per prompt. Completions are sampled at full length (``min_completion_length``
= ``max_completion_length``): memory is sized for the longest. Each trainer is measured in
a process of its own (see ``llm_rl.memory_measure``). Writes memory_comparison.md, .json
and .png to ``--output_dir``.
"""

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llm_rl.cli import parse_args, run
from llm_rl.errors import UserError
from llm_rl.memory import PRESETS, ModelShape, StepShape, predict_memory
from llm_rl.memory_measure import (
    comparison_markdown,
    plot_comparison,
    run_worker,
    trainer_spec,
)

LABELS = {"ppo": "PPO, separate critic", "ppo_shared": "PPO, value head", "grpo": "GRPO"}


@dataclass
class CompareArguments:
    model: str = field(default="tiny", metadata={"help": f"'tiny', a local model folder or config.json; with --predict_only also {', '.join(PRESETS)}."})
    hidden_size: int | None = field(default=None, metadata={"help": "Build an untrained Qwen2 this wide (tiny tokenizer) instead of --model."})
    num_layers: int = field(default=12, metadata={"help": "Layers of the model --hidden_size builds."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per micro-batch and device, for every trainer."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per step (all generated at once)."})
    num_generations: int = field(default=8, metadata={"help": "GRPO's group size G."})
    ppo_num_generations: int = field(default=1, metadata={"help": "Completions per prompt for PPO (1: classic PPO)."})
    max_completion_length: int = field(default=8, metadata={"help": "Completion tokens (all sampled, the worst case)."})
    prompt_length: int | None = field(default=None, metadata={"help": "Prompt tokens (default: the longest arithmetic prompt; 256 with --predict_only)."})
    use_peft: bool = field(default=False, metadata={"help": "LoRA on the policy (the reference is then the adapter-free base)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    ppo_value: Literal["both", "separate", "shared"] = field(default="both", metadata={"help": "PPO's value model(s) to compare."})
    reference: bool = field(default=True, metadata={"help": "A KL penalty to a frozen reference (GRPO beta 0.04, PPO kl_coef 0.05); --reference False loads none."})
    reward_model: str | None = field(default=None, metadata={"help": "Folder of a learned reward model (default: the rule reward)."})
    steps: int = field(default=3, metadata={"help": "Steps measured per trainer (phases are read from step 2 on)."})
    predict_only: bool = field(default=False, metadata={"help": "Only predict, from the config: for models too large for this machine."})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "With --predict_only, the device to predict for (auto: cuda); else this machine's."})
    dtype: str | None = field(default=None, metadata={"help": "Weights' dtype to predict for (default: the config's)."})
    num_threads: int = field(default=1, metadata={"help": "CPU threads per measured trainer."})
    output_dir: str = field(default="outputs/compare_memory", metadata={"help": "Where the .md, .json and .png go."})


def resolve_model(args: CompareArguments, workdir: str) -> tuple[str | None, ModelShape, str]:
    """(folder to train, or None; its shape; a name for the report)."""
    if args.hidden_size:
        from llm_rl.models.tiny import build_tokenizer, build_untrained

        tokenizer = build_tokenizer()
        build_untrained(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers).save_pretrained(workdir)
        tokenizer.save_pretrained(workdir)
        path, name = workdir, f"Qwen2 {args.hidden_size} wide x {args.num_layers} layers (untrained)"
    elif args.model in PRESETS:
        path, name = None, args.model
    else:
        from llm_rl.models.loading import resolve_model_path

        path, name = resolve_model_path(args.model), args.model
    shape = PRESETS[args.model] if path is None else ModelShape.from_config(path)
    shape = ModelShape(**{**shape.__dict__, "dtype": args.dtype or shape.dtype})
    return path, shape, f"{name}: {shape.num_params / 1e6:,.1f}M parameters, {shape.dtype}"


def longest_arithmetic_prompt(path: str) -> int:
    from llm_rl.data import arithmetic_dataset
    from llm_rl.models.loading import load_tokenizer

    tokenizer = load_tokenizer(path)
    return max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in arithmetic_dataset(256, seed=0)["prompt"])


ARGUMENTS = (CompareArguments,)  # recipes/configs/compare_memory.yaml writes out its defaults
TINY_DEFAULTS = {}


def main(argv=None) -> dict | None:
    (args,) = parse_args(ARGUMENTS, TINY_DEFAULTS, argv)
    if int(os.environ.get("RANK", "0")) != 0:
        return None  # under a multi-process launch, the main process measures; memory is per device
    import torch

    if args.predict_only:
        device = "cuda" if args.device == "auto" else args.device
    else:  # predicted for the device the runs are measured on
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as workdir:
        path, shape, name = resolve_model(args, workdir)
        if path is None and not args.predict_only:
            raise UserError(f"{args.model} is a preset shape, not weights: add --predict_only to predict its memory")
        prompt_length = args.prompt_length or (256 if args.predict_only else longest_arithmetic_prompt(path))
        reward = ModelShape.from_config(args.reward_model) if args.reward_model else None
        runs = {"ppo": "separate", "ppo_shared": "shared", "grpo": "none"}
        runs = {k: v for k, v in runs.items() if k == "grpo" or args.ppo_value in ("both", v)}
        results = {}
        for run, value_model in runs.items():
            algorithm = "grpo" if run == "grpo" else "ppo"
            generations = args.num_generations if run == "grpo" else args.ppo_num_generations
            step = StepShape(algorithm, args.batch_size, generations, prompt_length, args.max_completion_length,
                             args.gradient_accumulation_steps, value_model=value_model, reference=args.reference,
                             use_peft=args.use_peft, lora_r=args.lora_r, gradient_checkpointing=args.gradient_checkpointing,
                             reward_model=reward, device=device, mixed_precision=device == "cuda")  # fmt: skip
            estimate = predict_memory(shape, step)
            results[run] = {"predicted": {**estimate.components, "total": estimate.total}, "predicted_phases": estimate.by_phase()}
            if not args.predict_only:
                results[run].update(run_worker(trainer_spec(step, path, args.steps, args.reward_model, args.num_threads)))
                results[run].pop("records")
    summary = (f"{name}; device {device}; {args.batch_size} x {args.gradient_accumulation_steps} prompts per step; GRPO G = {args.num_generations}, PPO "
               f"{args.ppo_num_generations} completion(s) per prompt; {prompt_length} prompt + {args.max_completion_length} "
               f"completion tokens; {'LoRA r=' + str(args.lora_r) if args.use_peft else 'full fine-tuning'}"
               f"{', gradient checkpointing' if args.gradient_checkpointing else ''}"
               f"{'; reference model' if args.reference else '; no reference model'}"
               f"{'; predicted only' if args.predict_only else f'; measured over {args.steps} steps'}")  # fmt: skip
    results["settings"] = {**vars(args), "model": name, "prompt_length": prompt_length, "device": device, "summary": summary}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_comparison.json").write_text(json.dumps(results, indent=2))
    (out / "memory_comparison.md").write_text(text := comparison_markdown(results, LABELS))
    plot_comparison(results, LABELS, out / "memory_comparison.png")
    print(text)
    return results


if __name__ == "__main__":
    run(main)  # a user error: one paragraph and exit status 2 (--debug: the traceback)
