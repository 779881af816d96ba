"""Bad input, one table: each case stops with a clear one-paragraph message from llm_rl itself.

Every row names a mistake a user can make, a callable that makes it, the exception (or
warning) expected and a regex of the message, which must say what is wrong and what to
do. Errors must be raised by llm_rl's own checks (the innermost frame is in ``llm_rl/`` or
``reward_models/``), not surface from deep inside a library; command-line mistakes end
in an argparse-style ``error:`` line and exit status 2.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig
from llm_rl.core import group_advantages
from llm_rl.data import PromptDataError, load_prompts
from llm_rl.errors import CheckpointNotFoundError, ModelLoadError, ModelNotFoundError, OutputDirError
from llm_rl.models.loading import load_tokenizer, resolve_model_path
from llm_rl.recipe_utils import parse
from llm_rl.trainers.config import ConfigError
from reward_models import LearnedReward, RewardError, compute_rewards
from reward_models.combine import RewardModelNotFoundError

ROOT = Path(__file__).resolve().parents[1]
OUR_CODE = (ROOT / "llm_rl", ROOT / "reward_models")


@dataclass(frozen=True)
class Case:
    id: str
    trigger: Callable[[SimpleNamespace], object]
    raises: type[BaseException]  # a Warning subclass: the run goes on, with this warning
    message: str  # regex searched in the message


# --- helpers the triggers share --------------------------------------------------------------------

ARITHMETIC = [{"prompt": f"What is {i} + 1? Answer:", "answer": str(i + 1)} for i in range(4)]
CHATS = [{"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "4"}]


def _config(ctx, **overrides) -> GRPOConfig:
    base = dict(output_dir=str(ctx.tmp / "out"), max_steps=1, per_device_batch_size=2, num_generations=2,
                max_completion_length=2, lr_scheduler_type="constant", warmup_steps=0)
    return GRPOConfig(**{**base, **overrides})


def _zero_reward(prompts, completions, **kwargs):
    return [0.0] * len(completions)


def _grpo(ctx, model=None, rewards=(_zero_reward,), data=ARITHMETIC, **config):
    return GRPOTrainer(model or ctx.model, list(rewards), args=_config(ctx, **config), train_dataset=Dataset.from_list(data))


def _tokenizer(ctx, **changes):
    """A fresh copy of the tiny tokenizer with attributes changed (e.g. pad_token=None)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.model)
    for name, value in changes.items():
        setattr(tokenizer, name, value)
    return tokenizer


def _saved_tokenizer_without_pad(ctx) -> str:
    path = ctx.tmp / "no-pad-tokenizer"
    _tokenizer(ctx, pad_token=None).save_pretrained(path)
    return str(path)


def _rewards(fn, n=4):
    return compute_rewards([fn], None, ["What is 2 + 2?"] * n, ["4", "5", "four", "#### 4"][:n], {"answer": ["4"] * n})


def _raising(prompts, completions, **kwargs):
    raise KeyError("answer")


def _wrong_count(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def _all_none(prompts, completions, **kwargs):
    return [None] * len(completions)


def _nan(prompts, completions, **kwargs):
    return [1.0, float("nan"), 0.0, 1.0]


def _inf(prompts, completions, **kwargs):
    return [1.0, 0.0, float("inf"), 1.0]


def _empty_file(ctx) -> Path:
    path = ctx.tmp / "empty.jsonl"
    path.write_text("")
    return path


def _earlier_run(ctx, leftover: str) -> str:
    """An output folder holding another run's ``metrics.jsonl`` or ``checkpoint-N`` folder."""
    out = ctx.tmp / "earlier-run"
    out.mkdir()
    (out / leftover).mkdir() if leftover.startswith("checkpoint-") else (out / leftover).write_text("{}\n")
    return str(out)


# --- the table --------------------------------------------------------------------------------------

CASES = [
    # data
    Case("dataset_path_missing", lambda ctx: load_prompts("./no/such/prompts.jsonl"),
         PromptDataError, r"'./no/such/prompts.jsonl' does not exist .*Check the path"),
    Case("dataset_hub_name_offline", lambda ctx: load_prompts("nobody-llm-rl/no-such-dataset"),
         PromptDataError, r"this process is offline .*Pass a local .* file"),
    Case("dataset_empty", lambda ctx: load_prompts(Dataset.from_dict({"prompt": []})),
         PromptDataError, r"has no rows\. Point at a file or split that holds prompts"),
    Case("dataset_file_empty", lambda ctx: load_prompts(_empty_file(ctx)),
         PromptDataError, r"empty\.jsonl is empty\. Point at a file"),
    Case("prompt_column_missing",
         lambda ctx: load_prompts(Dataset.from_list([{"question": "What is 2 + 2?", "answer": "4"}])),
         PromptDataError, r"has no column 'prompt'; its columns are \['question', 'answer'\]\. .*--prompt_column"),
    Case("all_prompts_too_long", lambda ctx: _grpo(ctx, max_prompt_length=3),
         PromptDataError, r"4 of 4 prompts are longer than max_prompt_length=3 .*Raise --max_prompt_length to at least"),
    Case("all_prompts_too_long_filtered", lambda ctx: _grpo(ctx, max_prompt_length=3, long_prompts="filter"),
         PromptDataError, r"filtering would leave none\. Raise --max_prompt_length"),
    Case("chat_prompt_without_chat_template",
         lambda ctx: load_prompts(Dataset.from_list(CHATS), tokenizer=_tokenizer(ctx, chat_template=None)),
         PromptDataError, r"prompts are chats .* no chat template.*Use a tokenizer .* that has one"),
    # model and tokenizer
    Case("model_path_missing", lambda ctx: resolve_model_path("./no/such/model"),
         ModelNotFoundError, r"Model path './no/such/model' does not exist\. Pass a folder saved with save_pretrained"),
    Case("model_hub_name_offline", lambda ctx: _grpo(ctx, model="nobody-llm-rl/no-such-model"),
         ModelLoadError, r"Could not load a tokenizer from 'nobody-llm-rl/no-such-model'\. The hub is unreachable .*Pass a local folder"),
    Case("tokenizer_without_pad_token", lambda ctx: load_tokenizer(_saved_tokenizer_without_pad(ctx)),
         UserWarning, r"has no pad token; using its EOS token '<\|endoftext\|>' for padding"),
    Case("processing_class_without_pad_token",
         lambda ctx: GRPOTrainer(ctx.model, [_zero_reward], args=_config(ctx), train_dataset=Dataset.from_list(ARITHMETIC),
                                 processing_class=_tokenizer(ctx, pad_token=None)).training_step(),
         UserWarning, r"processing_class has no pad token; using its EOS token"),
    # groups and batches
    Case("num_generations_below_2", lambda ctx: GRPOConfig(num_generations=1),
         ConfigError, r"num_generations must be >= 2 for GRPO .*got 1; use PPOTrainer"),
    Case("rewards_not_whole_groups", lambda ctx: group_advantages(torch.ones(5), group_size=2),
         ValueError, r"5 rewards do not split into whole groups of 2: pass all 2 rewards of every prompt"),
    Case("ppo_batch_not_whole_mini_batches", lambda ctx: PPOConfig(per_device_batch_size=3, num_generations=1, num_mini_batches=2),
         ConfigError, r"3 completions per process cannot be split into 2 mini-batches.*change per_device_batch_size or num_mini_batches"),
    # reward functions and models
    Case("reward_raises", lambda ctx: _rewards(_raising),
         RewardError, r"Reward function '_raising' raised KeyError: 'answer' .*check that it accepts these keywords"),
    Case("reward_wrong_count", lambda ctx: _rewards(_wrong_count),
         RewardError, r"'_wrong_count' returned 3 rewards for 4 completions .*one float, or None .* per completion"),
    Case("reward_none_for_every_sample", lambda ctx: _rewards(_all_none),
         RewardError, r"No reward function applies to sample 0 .*all of \['_all_none'\] returned None for it"),
    Case("reward_nan", lambda ctx: _rewards(_nan),
         RewardError, r"'_nan' returned nan for sample 1 \(completion: '5'\); rewards must be finite\. Return None"),
    Case("reward_inf", lambda ctx: _rewards(_inf),
         RewardError, r"'_inf' returned inf for sample 2 .*rewards must be finite"),
    Case("reward_model_is_a_causal_lm", lambda ctx: _grpo(ctx, rewards=[ctx.model]),
         RewardError, r"is a Qwen2ForCausalLM, not a sequence-classification reward model.*Train one with"),
    Case("reward_model_path_missing", lambda ctx: LearnedReward("./no/such/reward_model"),
         RewardModelNotFoundError, r"No reward model folder at './no/such/reward_model'.*Pass the folder"),
    # config values
    Case("learning_rate_negative", lambda ctx: GRPOConfig(learning_rate=-1e-5),
         ConfigError, r"learning_rate must be a finite number > 0, got -1e-05"),
    Case("learning_rate_wrong_type", lambda ctx: GRPOConfig(learning_rate="1e-5"),
         ConfigError, r"learning_rate must be float, got '1e-5' \(a str\); change learning_rate"),
    Case("max_steps_wrong_type", lambda ctx: GRPOConfig(max_steps=2.5),
         ConfigError, r"max_steps must be int, got 2\.5 \(a float\)"),
    Case("choice_not_allowed", lambda ctx: GRPOConfig(loss_aggregation="mean"),
         ConfigError, r"loss_aggregation must be one of 'token_mean', 'seq_mean', 'seq_sum_norm', got 'mean'"),
    Case("epsilon_at_least_1", lambda ctx: GRPOConfig(epsilon_low=1.0),
         ConfigError, r"epsilon_low must be in \(0, 1\), got 1\.0"),
    Case("ppo_cliprange_at_least_1", lambda ctx: PPOConfig(cliprange=1.5),
         ConfigError, r"cliprange must be in \(0, 1\) or None, got 1\.5"),
    Case("cli_learning_rate_negative", lambda ctx: parse(GRPOConfig, argv=["--learning_rate", "-1"]),
         SystemExit, r"error: Invalid config: learning_rate must be a finite number > 0, got -1\.0$"),
    Case("cli_epsilon_at_least_1", lambda ctx: parse(GRPOConfig, argv=["--epsilon_low", "1.5"]),
         SystemExit, r"error: Invalid config: epsilon_low must be in \(0, 1\), got 1\.5$"),
    Case("cli_wrong_type", lambda ctx: parse(GRPOConfig, argv=["--max_steps", "ten"]),
         SystemExit, r"error: argument --max_steps.*: invalid int value: 'ten'$"),
    # output folder and resume
    Case("output_dir_holds_metrics", lambda ctx: _grpo(ctx, output_dir=_earlier_run(ctx, "metrics.jsonl")),
         OutputDirError, r"already holds a run .*another --output_dir, pass --overwrite_output_dir .*--resume_from_checkpoint latest"),
    Case("output_dir_holds_checkpoints", lambda ctx: _grpo(ctx, output_dir=_earlier_run(ctx, "checkpoint-3")),
         OutputDirError, r"already holds a run"),
    Case("resume_without_checkpoint", lambda ctx: _grpo(ctx, resume_from_checkpoint="latest").train(),
         CheckpointNotFoundError, r"No complete checkpoint found for resume_from_checkpoint='latest'.*start without --resume_from_checkpoint"),
]


def _raised_by_llm_rl(tb) -> bool:
    innermost = Path(traceback.extract_tb(tb)[-1].filename).resolve()
    return any(innermost.is_relative_to(folder) for folder in OUR_CODE)


@pytest.fixture
def ctx(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return SimpleNamespace(tmp=tmp_path, model=tiny_model_dir)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_a_clear_error(case, ctx, capsys):
    if issubclass(case.raises, Warning):
        with pytest.warns(case.raises, match=case.message):
            case.trigger(ctx)  # and no exception: the run goes on
        return
    with pytest.raises(BaseException) as caught:
        case.trigger(ctx)
    assert caught.type is case.raises, f"{caught.type.__name__}: {caught.value}"
    if caught.type is SystemExit:  # the command line: one argparse-style line on stderr, status 2
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        message = err.strip().splitlines()[-1]
    else:
        message = str(caught.value)
        assert _raised_by_llm_rl(caught.tb), f"raised from {traceback.extract_tb(caught.tb)[-1].filename}"
    assert re.search(case.message, message), message
    assert "\n" not in message.strip(), "the message should be one paragraph"


def test_the_table_covers_every_case_of_the_issue():
    """Issue 8's list of bad input, each mapped to the rows above that cover it."""
    issue = {
        "dataset path that does not exist": ["dataset_path_missing"],
        "hub name while offline": ["dataset_hub_name_offline", "model_hub_name_offline"],
        "empty dataset": ["dataset_empty", "dataset_file_empty"],
        "prompt column missing": ["prompt_column_missing"],
        "prompts all longer than max_prompt_length": ["all_prompts_too_long", "all_prompts_too_long_filtered"],
        "tokenizer with no pad token": ["tokenizer_without_pad_token", "processing_class_without_pad_token"],
        "chat prompt without chat template": ["chat_prompt_without_chat_template"],
        "num_generations < 2": ["num_generations_below_2"],
        "global batch not divisible into whole groups": ["rewards_not_whole_groups", "ppo_batch_not_whole_mini_batches"],
        "reward function raises / wrong count / None / NaN / inf": [
            "reward_raises", "reward_wrong_count", "reward_none_for_every_sample", "reward_nan", "reward_inf"],
        "reward model path that is a causal LM": ["reward_model_is_a_causal_lm"],
        "config value of wrong type or out of range": [
            "learning_rate_negative", "learning_rate_wrong_type", "epsilon_at_least_1", "cli_learning_rate_negative"],
        "output folder holding another run": ["output_dir_holds_metrics", "output_dir_holds_checkpoints"],
    }
    ids = {case.id for case in CASES}
    assert not [row for rows in issue.values() for row in rows if row not in ids]
