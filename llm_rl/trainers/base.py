"""What every llm_rl trainer shares: loading, data, rewards, the update, logging, saving.

A concrete trainer (GRPO, PPO) implements ``training_step()``: rollout -> score ->
advantages -> updates, returning the step's metrics. Everything around it — the
accelerate setup, the prompt stream, the guarded optimizer step, metrics, checkpoints
and the final save — lives here once.
"""

from __future__ import annotations

import json
import math
import resource
import signal
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import get_scheduler

from llm_rl.data.prompts import is_chat, load_prompts, render_prompt
from llm_rl.models.forward import completion_logprobs
from llm_rl.models.embedding import use_sparse_embedding_gradient
from llm_rl.models.loading import load_causal_lm, load_tokenizer, resolve_model_path, use_eos_for_padding
from llm_rl.models.swiglu import use_memory_efficient_swiglu
from llm_rl.trainers import checkpoint, distributed, trackers
from llm_rl.trainers.config import ConfigError, RLConfig
from llm_rl.trainers.logging import MetricsLogger, plot_reward_curve
from llm_rl.trainers.prompt_stream import PromptStream
from llm_rl.rollout import Rollout, completion_mask_from_ids, eos_token_ids
from llm_rl.rollout.engine import ModelGenerateEngine, SamplingSettings
from reward_models import LearnedReward, RewardError, TrainerState, compute_rewards


def _lora_config(args: RLConfig):
    from peft import LoraConfig

    targets = args.lora_target_modules
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )


def ready_for_training(model, args: RLConfig):
    """Train mode, dropout off, the memory-efficient SwiGLU, gradient checkpointing (each optional); returns ``model``.

    from_pretrained returns eval mode, where transformers skips gradient checkpointing;
    dropout goes instead (as in TRL), so train-mode log-probs match the sampler's.
    """
    model.train()
    if args.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if args.memory_efficient_swiglu:
        use_memory_efficient_swiglu(model)
    if args.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.24's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def warn_if_low_precision_weights(model, model_dtype: str) -> None:
    """A model passed in as an object is trained in the dtype it has; say so when that is not float32."""
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    if model_dtype == "float32" and dtypes - {torch.float32}:
        warnings.warn(
            f"The model's trainable weights are {sorted(str(d) for d in dtypes)}: AdamW then keeps no float32 master "
            "copy and updates below that precision are lost. Load it with dtype=torch.float32 (bf16=True still "
            "runs the forward in bf16), or pass the model as a name or folder.",
            stacklevel=3,
        )


def row_chunks(rows: torch.Tensor, num_chunks: int) -> list[torch.Tensor]:
    """``rows`` split into ``num_chunks`` equal micro-batches (the batch is built divisible)."""
    return list(rows.chunk(num_chunks))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


class BaseRLTrainer:
    """Shared machinery; see ``GRPOTrainer`` and ``PPOTrainer`` for the algorithms."""

    needs_reference: bool = True
    # Log-prob forwards run each prompt once for its group of completions (see models.forward).
    # Only where every forward sees whole groups; PPO's shuffled mini-batches do not, and its
    # old log-probs must come from the same forward as its updates (ratio exactly 1 at the start).
    share_prompt_prefix: bool = False
    # The method each update micro-batch enters first; benchmarks and memory_measure hook it
    # to mark where a step's update begins.
    update_entry: str = "_accumulate"

    def __init__(
        self,
        model,
        reward_funcs,
        args: RLConfig,
        train_dataset,
        peft_config=None,
        processing_class=None,
        eval_fn: Callable | None = None,
    ):
        self.args = args
        checkpoint.check_output_dir(args.output_dir, args.overwrite_output_dir, args.resume_from_checkpoint)
        use_bf16 = args.bf16 if args.bf16 is not None else (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        # DDP, FSDP2 or DeepSpeed, as `accelerate launch --config_file` says; on GPUs or, over gloo, on CPUs.
        self.accelerator = distributed.make_accelerator(
            log_with=args.report_to or None,  # a list of tracker names (config.tracker_names)
            project_dir=args.output_dir,
            mixed_precision="bf16" if use_bf16 else "no",
            gradient_accumulation_steps=args.gradient_accumulation_steps,
        )
        set_seed(args.seed)

        # --- policy, tokenizer, reference ---
        path = resolve_model_path(model) if isinstance(model, str) else model
        if processing_class is not None:  # batched generation pads, so a passed-in tokenizer needs a pad token too
            self.tokenizer = use_eos_for_padding(processing_class, "processing_class")
        else:
            self.tokenizer = load_tokenizer(path if isinstance(path, str) else path.name_or_path, args.trust_remote_code)
        policy = ready_for_training(load_causal_lm(path, args.trust_remote_code, args.model_dtype), args)
        warn_if_low_precision_weights(policy, args.model_dtype)
        self.is_peft = bool(args.use_peft or peft_config is not None)
        if self.is_peft:
            from peft import get_peft_model

            policy = get_peft_model(policy, peft_config or _lora_config(args))
        # With LoRA the reference is the same weights with the adapter switched off: no second copy.
        self.reference = None
        if self.needs_reference and not self.is_peft:
            self.reference = distributed.reference_model(self.accelerator, policy, path, args.trust_remote_code, args.model_dtype)
        if args.sparse_embedding_grad and self.accelerator.num_processes == 1 and not distributed.is_sharded(self.accelerator):
            use_sparse_embedding_gradient(policy)

        # --- rewards ---
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        self.reward_funcs = [LearnedReward(f, device=self.accelerator.device) if isinstance(f, str) else f for f in funcs]
        if not self.reward_funcs:
            raise ConfigError("Invalid config: reward_funcs is empty: pass at least one reward function or reward model")
        if args.reward_weights is not None and len(args.reward_weights) != len(self.reward_funcs):
            raise ConfigError(
                f"Invalid config: reward_weights has {len(args.reward_weights)} entries for {len(self.reward_funcs)} "
                "reward functions; give one weight per reward function (--reward_weights W1 W2 ...) or leave it unset"
            )

        # --- data ---
        self.dataset = load_prompts(
            train_dataset, tokenizer=self.tokenizer, max_prompt_length=args.max_prompt_length, long_prompts=args.long_prompts
        )
        acc = self.accelerator
        self.stream = PromptStream(
            len(self.dataset),
            args.per_device_batch_size * args.gradient_accumulation_steps * acc.num_processes,
            acc.num_processes,
            acc.process_index,
            args.seed,
        )

        # --- optimisation ---
        trainable = self.wrap_policy(policy)
        optimizer, self.scheduler = self._optimizer_and_scheduler(trainable)
        # The scheduler stays unprepared: accelerate would step it once per process per update,
        # and our schedule is counted in optimizer updates, the same on 1 or N processes.
        # Its state is checkpointed in trainer_state.json (see checkpoint.save).
        distributed.configure_deepspeed(
            acc, args.per_device_batch_size * getattr(args, "num_generations", 1), args.max_grad_norm
        )
        self.model, self.optimizer = acc.prepare(trainable, optimizer)
        # frozen models are sharded (FSDP2, ZeRO-3) or placed like the policy
        if self.reference is not None:
            self.reference = distributed.prepare_frozen(acc, self.reference)
        for reward in self.reward_funcs:
            if isinstance(reward, LearnedReward) and distributed.is_sharded(acc):
                reward.model = distributed.prepare_frozen(acc, reward.model)
        self.rollout_engine = self._rollout_engine()
        self.eval_fn = eval_fn
        self.step, self.skipped_steps = 0, 0
        distributed.release_at_exit(self)

    # ------------------------------------------------------------------ setup helpers
    def _rollout_engine(self) -> ModelGenerateEngine:
        """``model.generate`` from the policy, or from a ``rollout_dtype`` copy of it (see rollout.engine)."""
        args = self.args
        trained = {p.dtype for p in self.lm.parameters() if p.is_floating_point()}
        dtype = None if args.rollout_dtype is None or trained == {getattr(torch, args.rollout_dtype)} else args.rollout_dtype
        if dtype is not None and distributed.is_sharded(self.accelerator):
            raise ConfigError(
                f"Invalid config: rollout_dtype={dtype!r} keeps a whole copy of the policy on every process, which "
                "FSDP2 and DeepSpeed do not; leave rollout_dtype unset (None) with a sharding engine"
            )
        sampling = SamplingSettings(args.max_completion_length, args.temperature, args.top_p, args.top_k,
                                    args.min_completion_length)
        return ModelGenerateEngine(lambda: self.lm, self.tokenizer, sampling, self.generating,
                                   None if dtype is None else getattr(torch, dtype))

    def _optimizer_and_scheduler(self, policy):
        params = [p for p in policy.parameters() if p.requires_grad]
        args = self.args
        # Fused: one kernel over all tensors instead of a dozen ops per tensor (also TRL's and
        # transformers' default). Sharded engines (FSDP2, DeepSpeed) keep the default implementation.
        fused = not distributed.is_sharded(self.accelerator) and all(p.is_floating_point() for p in params)
        optimizer = torch.optim.AdamW(
            params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay,
            fused=fused or None,
        )
        scheduler = get_scheduler(
            args.lr_scheduler_type,
            optimizer,
            num_warmup_steps=args.warmup_steps,
            num_training_steps=args.max_steps * self.updates_per_step(),
        )
        return optimizer, scheduler

    def wrap_policy(self, policy):
        """The module that is trained and sharded; PPO adds a value head here."""
        return policy

    lm_state_prefix = ""  # where the LM's weights sit in the trained module's state dict

    @property
    def lm(self):
        """The unwrapped causal LM: what generates, is evaluated, and is saved to final/."""
        return self.unwrapped

    def updates_per_step(self) -> int:
        """Optimizer updates per rollout step (GRPO: num_iterations; PPO: epochs x mini-batches)."""
        return 1

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ shared step pieces
    def next_prompts(self) -> tuple[list, list[str], dict[str, list], list[int]]:
        """This process's prompts for the step: raw prompts, rendered texts, other columns, seeds."""
        indices, seeds = self.stream.next_step(self.step)
        rows = self.dataset.select(indices).to_dict()
        prompts = rows.pop("prompt")
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        return prompts, texts, rows, seeds

    def score(self, prompts: list, completion_ids: torch.Tensor, columns: dict[str, list], group_size: int):
        """Rewards `(B,)` and per-function rewards of the decoded completions (repeated prompts).

        Reward functions that accept them also get ``completion_ids`` (each completion's tokens,
        EOS and padding excluded) and ``trainer_state``, as in TRL; ``reward_num_workers`` and
        ``reward_timeout`` say how they run (``reward_models.calling``). Then one collective:
        a ``RewardError`` on any process stops every process at this step (none is left waiting),
        and each function's scored samples are counted over all processes. A function that
        returned None for one batch only warns (TRL's behaviour); one that returned None for
        every sample of every process over the whole run (since it started or resumed) is an
        error at the last step.
        """
        args, acc = self.args, self.accelerator
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        repeated_prompts = [p for p in prompts for _ in range(group_size)]
        completions = [
            [{"role": "assistant", "content": t}] if is_chat(p) else t for p, t in zip(repeated_prompts, texts)
        ]
        repeated_columns = {k: [v for v in vs for _ in range(group_size)] for k, vs in columns.items()}
        mask, truncated = completion_mask_from_ids(completion_ids, eos_token_ids(self.lm, self.tokenizer))  # as the rollout's
        lengths = (mask.sum(-1) - (~truncated).long()).tolist()  # the mask holds the EOS; the ids passed do not
        ids = [row[:n].tolist() for row, n in zip(completion_ids.cpu(), lengths)]
        state = TrainerState(self.step, args.max_steps, acc.num_processes, acc.process_index)
        error, per_func = None, {}
        try:
            total, per_func = compute_rewards(
                self.reward_funcs, args.reward_weights, repeated_prompts, completions, repeated_columns,
                completion_ids=ids, trainer_state=state, num_workers=args.reward_num_workers,
                timeout=args.reward_timeout, group_size=group_size,
            )
        except RewardError as raised:
            error = raised
        failed = torch.zeros(acc.num_processes)  # (P,) 1 where that process's rewards failed
        failed[acc.process_index] = float(error is not None)
        scored = torch.tensor([float((~v.isnan()).sum()) for v in per_func.values()] or [0.0] * len(self.reward_funcs))
        reduced = self.global_sum(torch.cat([failed, scored])).cpu()  # (P + F,)
        if error is not None:
            raise error
        if reduced[: acc.num_processes].any():
            where = [i for i, f in enumerate(reduced[: acc.num_processes].tolist()) if f]
            raise RewardError(f"A reward function failed on process(es) {where} at step {self.step + 1} (the error is printed "
                              f"there); process {acc.process_index} stops at the same step.")
        steps, counts = getattr(self, "_reward_coverage", (0, 0))  # steps scored since this run (or resume) began
        self._reward_coverage = (steps + 1, counts + reduced[acc.num_processes :])  # counts: (F,) samples scored
        never = [name for name, count in zip(per_func, self._reward_coverage[1].tolist()) if count == 0]
        if never and self.step + 1 >= args.max_steps:
            raise RewardError(
                f"Reward function(s) {never} returned None for every sample of the whole run ({steps + 1} steps on "
                f"{acc.num_processes} process(es)): they never applied, so they trained nothing. Remove them from the reward "
                f"functions, or check the dataset columns they read (they got {sorted(columns)})."
            )
        device = acc.device
        return total.to(device), {k: v.to(device) for k, v in per_func.items()}

    @torch.no_grad()
    def logprobs_no_grad(self, model, rollout: Rollout) -> torch.Tensor:
        """No-grad log-probs `(B, C)` of the rollout (reference or old policy), one micro-batch at a time.

        ``per_device_batch_size`` prompts' rows per forward, as the update's micro-batches, so the
        pass's peak does not grow with the rollout (``gradient_accumulation_steps`` micro-batches);
        each trimmed to the padding its rows need, as the update trims them, and zero-padded back
        to the rollout's width (those columns are masked).
        """
        args = self.args
        group_size = args.num_generations if self.share_prompt_prefix else 1
        rows_per_pass = args.per_device_batch_size * args.num_generations
        all_rows = torch.arange(rollout.completion_ids.shape[0], device=rollout.completion_ids.device)
        logprobs = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32, device=rollout.completion_ids.device)
        for rows in all_rows.split(rows_per_pass):
            input_ids, attention_mask, width = rollout.model_inputs(rows)
            logprobs[rows, :width] = completion_logprobs(
                model, input_ids, attention_mask, width, args.temperature, group_size=group_size,
                tokens_per_chunk=args.logprob_chunk_size,
            )[0].float()
        return logprobs

    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor | None:
        if not self.needs_reference:
            return None
        # At the policy's precision (bf16 autocast when on), so the KL measures drift, not rounding:
        # the LoRA reference runs through the bare PeftModel, outside the prepared module's autocast.
        reference = self.lm if self.is_peft else self.reference
        with self.accelerator.autocast(), (self.lm.disable_adapter() if self.is_peft else nullcontext()):
            return self.logprobs_no_grad(reference, rollout)  # with LoRA, the base weights are the reference

    def global_sum(self, values: torch.Tensor) -> torch.Tensor:
        # on the accelerator's device: NCCL reduces CUDA tensors only
        return self.accelerator.reduce(values.detach().float().to(self.accelerator.device).clone(), reduction="sum")

    def rollout_metrics(self, scores, per_func, rollout: Rollout, stats) -> dict[str, float]:
        """Step metrics reduced over every process: rewards, lengths, and the means of ``stats``."""
        acc = self.accelerator
        all_scores = acc.gather(scores)
        lengths = rollout.completion_lengths().float()
        metrics = {
            "reward_mean": all_scores.mean().item(),
            "reward_std": all_scores.std().item() if all_scores.numel() > 1 else 0.0,
            "completion_length": (self.global_sum(lengths.sum()) / self.global_sum(torch.tensor(float(lengths.numel())))).item(),
            "truncated_fraction": self.global_sum(rollout.truncated.float().sum()).item() / all_scores.numel(),
            "generated_tokens": self.global_sum(lengths.sum()).item(),
        }
        for name, values in per_func.items():
            metrics[f"reward/{name}"] = torch.nanmean(acc.gather(values)).item()
        for key, values in stats.items():
            metrics[key] = (self.global_sum(torch.stack(values).mean()) / acc.num_processes).item()
        return metrics

    def global_mean_var(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked mean and Bessel-corrected variance of ``x`` over every process's valid entries."""
        m = mask.float()
        count = self.global_sum(m.sum())
        mean = self.global_sum((x * m).sum()) / count
        var = self.global_sum((((x - mean) * m) ** 2).sum()) / (count - 1).clamp_min(1)
        return mean, var

    @contextmanager
    def generating(self):
        """Context for ``generate``: the policy's weights whole, at the training forward's precision.

        FSDP2/ZeRO-3 gather the weights once per rollout instead of at every decoding step; bf16
        autocast applies as in the training forward (PPO generates through the bare inner LM).
        """
        # eval mode: with gradient checkpointing on, transformers turns the KV cache off in train mode
        self.model.eval()
        try:
            with distributed.whole_parameters(self.accelerator, self.model), self.accelerator.autocast():
                yield
        finally:
            self.model.train()

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch; the ``gradient_accumulation_steps``-th one closes the update.

        ``accumulate`` tells the engine which micro-batch that is: DDP and FSDP sync gradients
        only then, and DeepSpeed, which steps inside ``backward``, steps only then. Both
        accelerate and DeepSpeed divide the loss by the accumulation steps; the trainers'
        loss weights already normalise over the whole update, so that division is undone.
        """
        acc = self.accelerator
        with acc.accumulate(self.model):
            acc.backward(loss * acc.gradient_accumulation_steps)

    def optimizer_update(self) -> dict[str, float]:
        """Clip, then step — unless the gradient is NaN/inf, in which case the update is skipped."""
        max_norm = self.args.max_grad_norm or float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self.scheduler.step()
            self.rollout_engine.update_weights(self.lm)
        else:
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm}

    def training_step(self) -> dict[str, float]:
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Algorithm state a checkpoint must carry besides weights and optimizer (e.g. a KL controller)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ the loop
    def evaluate(self) -> dict[str, float]:
        if not self.eval_fn:
            return {}
        with self.generating():
            return dict(self.eval_fn(self.lm, self.tokenizer))

    def _interrupt_requested(self) -> bool:
        """True on every process once any process got SIGINT, so they all checkpoint together."""
        flag = torch.tensor(float(self._sigint_received), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "max").item())

    def train(self) -> dict:
        """Train to ``max_steps``; Ctrl-C (SIGINT) finishes the current step, checkpoints and returns."""
        self._sigint_received = False
        handler_installed = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_sigint) if handler_installed else None
        try:
            return self._train()
        finally:
            if handler_installed:
                signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum, frame) -> None:
        self._sigint_received = True

    def _train(self) -> dict:
        args, acc = self.args, self.accelerator
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        trackers.init_trackers(acc, args, self.lm)  # with the config, the model and the llm_rl version, before step 1
        if args.resume_from_checkpoint:
            checkpoint.load(self, args.resume_from_checkpoint)
        before = self.evaluate() if self.step == 0 else {}
        logger = MetricsLogger(acc, args.output_dir, args.max_steps, initial_step=self.step)
        if before:
            logger.log({**before, "num_processes": acc.num_processes}, step=0)
        while self.step < args.max_steps:
            start = time.perf_counter()
            metrics = self.training_step()
            self.step += 1
            seconds = time.perf_counter() - start
            metrics.update(
                step_seconds=seconds,
                tokens_per_second=metrics.pop("generated_tokens", 0.0) / seconds,
                peak_memory_mb=float(acc.reduce(torch.tensor(peak_memory_mb(acc.device), device=acc.device), "max")),
                learning_rate=self.scheduler.get_last_lr()[0],
                skipped_steps=self.skipped_steps,
            )
            if self.step == 1:
                metrics["num_processes"] = acc.num_processes
            if args.eval_steps and self.step % args.eval_steps == 0:
                metrics.update(self.evaluate())
            if self.step % args.logging_steps == 0 or self.step == args.max_steps:
                logger.log(metrics, step=self.step)
            if args.save_steps and self.step % args.save_steps == 0:
                checkpoint.save(self)
            logger.advance()
            if self._interrupt_requested():
                logger.close()
                path = checkpoint.save(self)
                print(f"interrupted: saved {path}; continue with --resume_from_checkpoint latest")
                self._finish_trackers()
                return {"steps": self.step, "interrupted": True, "checkpoint": str(path)}
        logger.close()
        after = self.evaluate()
        self.save_model(Path(args.output_dir) / "final")
        summary = {"steps": self.step, "num_processes": acc.num_processes, "distributed_type": acc.distributed_type.value,
                   "skipped_steps": self.skipped_steps}
        for key in after:
            summary[f"{key}_before"], summary[f"{key}_after"] = before.get(key), after[key]
        if acc.is_main_process:
            if after:
                (Path(args.output_dir) / "eval.json").write_text(json.dumps(summary, indent=2))
            plot_reward_curve(Path(args.output_dir) / "metrics.jsonl", Path(args.output_dir) / "reward_curve.png")
        self._finish_trackers()
        return summary

    def _finish_trackers(self) -> None:
        # Not accelerator.end_training(): it also destroys the process group, after which a
        # multi-process save_model() or evaluate() would fail (see distributed.release_at_exit).
        for tracker in self.accelerator.trackers:
            tracker.finish()

    def save_model(self, path: str | Path) -> None:
        """``from_pretrained``-loadable weights (safetensors) and tokenizer; a LoRA run saves its adapter.

        Written beside ``path`` and renamed into place (``checkpoint.publish``): a crash or a full
        disk mid-save never leaves a half-written model under ``path``."""
        self.accelerator.wait_for_everyone()
        state = distributed.full_state_dict(self.accelerator, self.model)  # gathered from the shards, on the main process
        if self.accelerator.is_main_process:
            checkpoint.write_folder_atomically(Path(path), lambda tmp: self.write_model(tmp, state))
        self.accelerator.wait_for_everyone()

    def write_model(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        """Write final/ from the trained module's full ``state`` (main process only); PPO adds its value head."""
        prefix = self.lm_state_prefix
        lm_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        self.lm.save_pretrained(path, state_dict=lm_state, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
