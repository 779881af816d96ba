"""Reward functions as TRL users write them: None for a whole batch, completion_ids, trainer_state.

The rule (reward_models.combine and BaseRLTrainer.score):
- a function returning None for every sample of one process's batch warns and is left out of
  that batch (TRL's behaviour); a sample no function applies to is an error;
- a function returning None for every sample of every process in every step of the run is an
  error at the run's last step (only then is it certain);
- a reward failure on one process stops every process at the same step.
"""

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
from reward_models import RewardError, RewardWarning, TrainerState, compute_rewards
from launching import ENV, accelerate_launch


ROOT = Path(__file__).resolve().parents[1]


def _dataset(n=8):
    from llm_rl.data import arithmetic_dataset

    return arithmetic_dataset(n, seed=1)


def _config(tmp_path, config_class=GRPOConfig, **more):
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=2, per_device_batch_size=2, num_generations=2,
                    max_completion_length=4)
    return config_class(**{**settings, **more})


def length_reward(prompts, completions, **kwargs):
    return [float(len(c) % 3) for c in completions]


def test_a_function_none_for_the_first_batch_only_warns_and_is_nan_in_that_steps_metrics(tiny_model_dir, tmp_path):
    def later_task(prompts, completions, trainer_state, **kwargs):
        return [None if trainer_state.global_step == 0 else 1.0 for _ in completions]

    trainer = GRPOTrainer(tiny_model_dir, [length_reward, later_task], args=_config(tmp_path), train_dataset=_dataset())
    with pytest.warns(RewardWarning, match="'later_task' returned None for every sample of a batch"):
        assert trainer.train()["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["reward/later_task"] != rows[0]["reward/later_task"]  # NaN: it applied to nothing at step 1
    assert rows[1]["reward/later_task"] == 1.0


@pytest.mark.parametrize("trainer_class, config_class", [(GRPOTrainer, GRPOConfig), (PPOTrainer, PPOConfig)])
def test_a_function_none_for_the_whole_run_is_an_error_at_its_last_step(trainer_class, config_class, tiny_model_dir, tmp_path):
    def never_applies(prompts, completions, **kwargs):
        return [None] * len(completions)

    steps = []

    def counting(prompts, completions, trainer_state, **kwargs):
        steps.append(trainer_state.global_step)
        return length_reward(prompts, completions)

    trainer = trainer_class(tiny_model_dir, [counting, never_applies], args=_config(tmp_path, config_class, max_steps=3),
                            train_dataset=_dataset())
    with pytest.warns(RewardWarning), pytest.raises(RewardError, match=r"\['never_applies'\] returned None for every sample of the whole run \(3 steps"):
        trainer.train()
    assert steps == [0, 1, 2] and trainer.step == 2  # steps 1 and 2 trained; the error stops step 3 before its update


def test_completion_ids_and_trainer_state_reach_the_functions_that_take_them(tiny_model_dir, tmp_path, monkeypatch):
    import llm_rl.rollout.engine as grpo_module  # where the trainer's rollout engine finds generate_rollout
    from transformers import AutoTokenizer

    rollouts, seen = [], []
    real_generate = grpo_module.generate_rollout
    monkeypatch.setattr(grpo_module, "generate_rollout", lambda *a, **k: rollouts.append(real_generate(*a, **k)) or rollouts[-1])

    def spy(prompts, completions, completion_ids, trainer_state, **kwargs):
        seen.append((completions, completion_ids, trainer_state))
        return [float(len(ids)) for ids in completion_ids]

    def strict(prompts, completions, answer):  # no **kwargs: still called, without the new keywords
        return [0.0] * len(completions)

    trainer = GRPOTrainer(tiny_model_dir, [spy, strict], args=_config(tmp_path, max_completion_length=6), train_dataset=_dataset())
    trainer.train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(seen) == len(rollouts) == 2
    for step, ((completions, ids, state), rollout) in enumerate(zip(seen, rollouts)):
        assert state == TrainerState(global_step=step, max_steps=2, num_processes=1, process_index=0)
        # the rollout's own mask holds the first EOS (when there is one): the ids passed stop before it
        lengths = rollout.completion_mask.sum(-1) - (~rollout.truncated).long()
        expected = [row[:n].tolist() for row, n in zip(rollout.completion_ids, lengths)]
        assert ids == expected and all(isinstance(t, int) for r in ids for t in r)
        assert [tokenizer.decode(r, skip_special_tokens=True) for r in ids] == completions


def test_score_excludes_eos_and_padding_from_completion_ids(tiny_model_dir, tmp_path):
    seen = {}

    def spy(prompts, completions, completion_ids, **kwargs):
        seen["ids"] = completion_ids
        return [0.0] * len(completions)

    trainer = GRPOTrainer(tiny_model_dir, [spy], args=_config(tmp_path), train_dataset=_dataset())
    tok = trainer.tokenizer
    eos, im_end, pad = tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    completion_ids = torch.tensor([
        [20, 21, eos, pad, pad],  # ended by EOS, then padding
        [22, 23, 24, 25, 26],     # truncated: no EOS within the limit
        [im_end, pad, pad, pad, pad],  # the chat EOS at once: an empty completion
        [27, pad, 28, im_end, pad],    # a sampled pad token before the EOS is a real token
    ])
    trainer.score(["a", "b"], completion_ids, {"answer": ["1", "2"]}, group_size=2)
    assert seen["ids"] == [[20, 21], [22, 23, 24, 25, 26], [], [27, pad, 28]]


def test_compute_rewards_passes_the_new_keywords_only_when_given():
    got = {}

    def spy(prompts, completions, **kwargs):
        got.update(kwargs)
        return [1.0] * len(completions)

    compute_rewards([spy], None, ["p"], ["c"], {"answer": ["1"]})
    assert got == {"answer": ["1"]}
    state = TrainerState(global_step=3, max_steps=10)
    compute_rewards([spy], None, ["p"], ["c"], {"answer": ["1"]}, completion_ids=[[5, 6]], trainer_state=state)
    assert got == {"answer": ["1"], "completion_ids": [[5, 6]], "trainer_state": state}
    with pytest.raises(RewardError, match="1 completion_ids for 2 completions"):
        compute_rewards([spy], None, ["p", "q"], ["c", "d"], completion_ids=[[1]])
    with pytest.raises(RewardError, match="Column 'completion_ids' clashes"):
        compute_rewards([spy], None, ["p"], ["c"], {"completion_ids": [[1]]})


# Two gloo processes: process 0's batch never fits `process_one_task` (None for all of it),
# process 1's does; with TRAIN_FAIL, process 1's reward raises at step 2.
TWO_PROCESS_RUN = textwrap.dedent('''
    import os, sys
    from llm_rl import GRPOConfig, GRPOTrainer
    from llm_rl.data import arithmetic_dataset

    def length_reward(prompts, completions, **kwargs):
        return [float(len(c) % 3) for c in completions]

    def process_one_task(prompts, completions, trainer_state, **kwargs):
        if trainer_state.process_index == 1 and os.environ.get("TRAIN_FAIL") and trainer_state.global_step == 1:
            raise RuntimeError("verifier crashed on process 1")
        return [1.0 if trainer_state.process_index == 1 else None for _ in completions]

    config = GRPOConfig(output_dir=sys.argv[2], max_steps=2, per_device_batch_size=2, num_generations=2,
                        max_completion_length=4)
    GRPOTrainer(sys.argv[1], [length_reward, process_one_task], args=config, train_dataset=arithmetic_dataset(16)).train()
    print("finished")
''')


@pytest.mark.slow
@pytest.mark.parametrize("fail", [False, True])
def test_two_processes_none_on_one_is_fine_and_a_failure_on_one_stops_both(fail, tiny_model_dir, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(TWO_PROCESS_RUN)
    env = {**ENV, **({"TRAIN_FAIL": "1"} if fail else {})}
    command = accelerate_launch(script, tiny_model_dir, tmp_path / "out")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if not fail:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "'process_one_task' returned None for every sample of a batch" in result.stderr  # process 0 warned
        rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
        assert [row["reward/process_one_task"] for row in rows] == [1.0, 1.0]  # nanmean over both processes
    else:
        assert result.returncode != 0 and "finished" not in result.stdout
        assert "'process_one_task' raised RuntimeError: verifier crashed on process 1" in result.stderr
        assert "A reward function failed on process(es) [1] at step 2" in result.stderr  # process 0 stopped too
