"""Dynamic sampling (DAPO): all-equal groups dropped, further rounds drawn, process-invariant and exactly resumable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer
from llm_rl.trainers.checkpoint import latest_checkpoint
from llm_rl.trainers.dynamic_sampling import choose_groups, informative_groups
from llm_rl.trainers.prompt_stream import PromptStream
from launching import run_alone_and_on_two_processes


ROOT = Path(__file__).resolve().parents[1]


# ---- the choice ----


def test_informative_groups_is_exact_inequality_not_a_mean_range():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.3, 0.7])
    assert informative_groups(rewards, 2).tolist() == [False, False, True, False, False, True]
    # partial scores of one value are as uninformative as all-correct ones
    assert informative_groups(rewards[6:], 3).tolist() == [False, True]


def test_choose_groups_takes_the_first_informative_then_fills():
    informative = torch.tensor([False, True, False, True, True, False])
    chosen, filler = choose_groups(informative, 2)
    assert chosen.tolist() == [1, 3] and filler.tolist() == [False, False]
    chosen, filler = choose_groups(torch.tensor([False, True, False, False]), 3)  # one found: filled with dropped ones
    assert chosen.tolist() == [1, 0, 2] and filler.tolist() == [False, True, True]
    with pytest.raises(ValueError, match="fewer than"):
        choose_groups(torch.tensor([True]), 2)


def test_stream_rounds_continue_the_stream_with_their_own_seeds():
    one, again = PromptStream(10, 4, 1, 0, seed=3), PromptStream(10, 4, 1, 0, seed=3)
    first, seeds_first = one.next_step(0)
    second, seeds_second = one.next_step(0)  # a second round of step 0
    third, seeds_third = one.next_step(1)
    assert one.cursor == 12
    assert again.next_step(0) == (first, seeds_first)
    assert again.next_step(0)[0] == second and set(seeds_second).isdisjoint(seeds_first)
    resumed = PromptStream(10, 4, 1, 0, seed=3)
    resumed.load_state_dict({"cursor": 8})  # saved after step 0's two rounds
    assert resumed.next_step(1) == (third, seeds_third)  # round 0 of step 1, as in the unbroken stream


# ---- in the trainer ----


def _config(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_batch_size=2, num_generations=4,
                max_completion_length=4, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
                dynamic_sampling=True, max_sampling_rounds=3)  # fmt: skip
    base.update(overrides)
    return GRPOConfig(**base)


def _dataset():
    from llm_rl.data import arithmetic_dataset

    return arithmetic_dataset(32, seed=1)


class ScriptedReward:
    """Call k returns ``plan[k]`` per group: "same" (all equal) or "text" (varies with the completion)."""

    def __init__(self, plan):
        self.plan, self.calls = plan, []
        self.__name__ = "scripted"

    def __call__(self, prompts, completions, **kwargs):
        kinds = self.plan[min(len(self.calls), len(self.plan) - 1)]
        G = len(completions) // len(kinds)
        rewards = [1.0 if kinds[i // G] == "same" else float(sum(map(ord, c)) % 97) for i, c in enumerate(completions)]
        self.calls.append(rewards)
        return rewards


def test_a_step_whose_groups_are_all_correct_draws_again(tiny_model_dir, tmp_path):
    reward = ScriptedReward([["same", "same"], ["text", "text"]])
    trainer = GRPOTrainer(tiny_model_dir, [reward], args=_config(tmp_path), train_dataset=_dataset())
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    metrics = trainer.training_step()
    assert len(reward.calls) == 2 and trainer.stream.cursor == 4  # two rounds of 2 prompts
    assert metrics["sampling_rounds"] == 2 and metrics["groups_dropped"] == 2
    second = torch.tensor(reward.calls[1])
    assert informative_groups(second, 4).all()  # (text rewards of 4 completions all equal would be a fluke)
    assert metrics["reward_mean"] == pytest.approx(second.mean().item())  # it trained on round 2's groups
    assert metrics["frac_zero_std_groups"] == 0.0 and metrics["grad_norm"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in trainer.unwrapped.named_parameters())


def test_a_step_at_the_round_limit_trains_on_what_it_has(tiny_model_dir, tmp_path):
    reward = ScriptedReward([["same", "text"], ["same", "same"]])
    trainer = GRPOTrainer(tiny_model_dir, [reward], args=_config(tmp_path, max_sampling_rounds=2), train_dataset=_dataset())
    groups, metrics = trainer.sample_groups()
    assert metrics == {"sampling_rounds": 2.0, "groups_dropped": 3.0} and trainer.stream.cursor == 4
    first = torch.tensor(reward.calls[0])
    torch.testing.assert_close(groups.rewards[:4], first[4:])  # round 1's informative group first
    torch.testing.assert_close(groups.rewards[4:], first[:4])  # then a dropped one, as filler
    assert groups.trainable.tolist() == [True] * 4 + [False] * 4

    # the step trains on the informative group only: the filler is masked out of the loss
    reward = ScriptedReward([["same", "text"], ["same", "same"]])
    trainer = GRPOTrainer(tiny_model_dir, [reward], args=_config(tmp_path / "b", max_sampling_rounds=2), train_dataset=_dataset())
    metrics = trainer.training_step()
    assert metrics["sampling_rounds"] == 2 and metrics["groups_dropped"] == 3
    assert metrics["frac_zero_std_groups"] == 0.5 and metrics["grad_norm"] > 0


def test_nothing_informative_at_the_round_limit_trains_nothing(tiny_model_dir, tmp_path):
    reward = ScriptedReward([["same", "same"]])
    trainer = GRPOTrainer(tiny_model_dir, [reward], args=_config(tmp_path, max_grad_norm=0.0), train_dataset=_dataset())
    metrics = trainer.training_step()
    assert metrics["sampling_rounds"] == 3 and metrics["groups_dropped"] == 6 and trainer.stream.cursor == 6
    assert metrics["grad_norm"] == 0.0


def test_dynamic_sampling_off_draws_once(tiny_model_dir, tmp_path):
    reward = ScriptedReward([["same", "same"]])
    trainer = GRPOTrainer(tiny_model_dir, [reward], args=_config(tmp_path, dynamic_sampling=False), train_dataset=_dataset())
    metrics = trainer.training_step()
    assert len(reward.calls) == 1 and trainer.stream.cursor == 2 and "sampling_rounds" not in metrics


# ---- processes and resume ----

DRAWS = """
import json, os, sys
from accelerate.utils import gather_object
from llm_rl import GRPOConfig, GRPOTrainer
from llm_rl.data import arithmetic_dataset

model, out, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3])

def half_the_prompts(prompts, completions, **kwargs):
    # all-equal for the prompts whose answer is even: about half the groups are dropped
    return [1.0 if int(a) % 2 == 0 else float(sum(map(ord, c)) % 97) for c, a in zip(completions, kwargs["answer"])]

config = GRPOConfig(output_dir=out, max_steps=3, per_device_batch_size=prompts, num_generations=2, max_completion_length=4,
                    dynamic_sampling=True, max_sampling_rounds=3, learning_rate=1e-2, lr_scheduler_type="constant",
                    warmup_steps=0, max_grad_norm=0.0, eval_steps=0, beta=0.0)
trainer = GRPOTrainer(model, [half_the_prompts], args=config, train_dataset=arithmetic_dataset(64, seed=0))
draws, next_step = [], trainer.stream.next_step

def recording(step):
    indices, seeds = next_step(step)
    draws.append({"step": step, "indices": indices, "seeds": seeds})
    return indices, seeds

trainer.stream.next_step = recording
trainer.train()
everyone = gather_object([draws])  # one list per process
if trainer.accelerator.is_main_process:
    json.dump(everyone, open(f"{out}/draws.json", "w"))
"""


@pytest.mark.slow
def test_two_processes_draw_and_train_on_exactly_the_prompts_one_process_does(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "draws.py"
    script.write_text(DRAWS)
    run_alone_and_on_two_processes(script, tiny_model_dir, tmp_path, timeout=600)

    (single,) = json.loads((tmp_path / "one" / "draws.json").read_text())
    rank_0, rank_1 = json.loads((tmp_path / "two" / "draws.json").read_text())
    assert len(single) == len(rank_0) == len(rank_1) > 3  # some step drew a second round
    for alone, a, b in zip(single, rank_0, rank_1):  # each round: process 0's half, then process 1's
        assert alone["step"] == a["step"] == b["step"]
        assert alone["indices"] == a["indices"] + b["indices"] and alone["seeds"] == a["seeds"] + b["seeds"]

    rows = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("one", "two")}
    for key in ("sampling_rounds", "groups_dropped", "reward_mean", "frac_zero_std_groups"):
        assert [r[key] for r in rows["one"] if key in r] == [r[key] for r in rows["two"] if key in r], key
    assert [r["grad_norm"] for r in rows["two"] if "grad_norm" in r] == pytest.approx(
        [r["grad_norm"] for r in rows["one"] if "grad_norm" in r], rel=1e-4)
    a, b = load_file(tmp_path / "one" / "final" / "model.safetensors"), load_file(tmp_path / "two" / "final" / "model.safetensors")
    # float rounding differs (2 x 2 rows vs 4 rows per forward); Adam at lr 1e-2 turns it into ~1e-5
    assert all(torch.allclose(a[k], b[k], atol=5e-5) for k in a)


KILLABLE = """
import os, sys, time
from pathlib import Path
from llm_rl import GRPOConfig, GRPOTrainer
from llm_rl.data import arithmetic_dataset

model, output_dir, *resume = sys.argv[1:]

def _reward(prompts, completions, **kwargs):
    flag = os.environ.get("HANG_FLAG")
    if flag and (Path(output_dir) / "checkpoint-2").exists():  # inside step 3: say so, then wait for SIGKILL
        open(flag, "w").close()
        time.sleep(600)
    # all equal for prompts whose answer is even: about half the groups are dropped
    return [1.0 if int(a) % 2 == 0 else float(len(c) % 3) for c, a in zip(completions, kwargs["answer"])]

config = GRPOConfig(output_dir=output_dir, max_steps=4, save_steps=2, per_device_batch_size=2, num_generations=4,
                    max_completion_length=4, learning_rate=1e-2, lr_scheduler_type="linear", dynamic_sampling=True,
                    max_sampling_rounds=3, resume_from_checkpoint=resume[0] if resume else None)
GRPOTrainer(model, [_reward], args=config, train_dataset=arithmetic_dataset(32, seed=2)).train()
"""


@pytest.mark.slow
def test_sigkill_and_resume_with_dynamic_sampling_is_bit_identical(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "run.py"
    script.write_text(KILLABLE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = lambda out, *more: [sys.executable, str(script), tiny_model_dir, str(tmp_path / out), *more]  # noqa: E731

    unbroken = subprocess.run(run("a"), env=env, capture_output=True, text=True, timeout=600)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    flag = tmp_path / "in-step-3"
    victim = subprocess.Popen(run("b"), env={**env, "HANG_FLAG": str(flag)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not flag.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flag.exists(), victim.stderr.read()[-3000:] if victim.poll() is not None else "step 3 never started"
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-2" and not (tmp_path / "b" / "final").exists()

    resumed = subprocess.run(run("b", "latest"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(tmp_path / "a" / "final" / "model.safetensors"), load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = {run: [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in "ab"}
    rounds = {run: [r["sampling_rounds"] for r in rows if "sampling_rounds" in r] for run, rows in logged.items()}
    assert rounds["a"] == rounds["b"] and max(rounds["a"]) > 1  # it did draw more rounds, and the same ones after resume
    cursor = json.loads((tmp_path / "b" / "checkpoint-4" / "trainer_state.json").read_text())["prompt_stream"]["cursor"]
    assert cursor == 2 * sum(rounds["a"])  # the stream moved by what was drawn
    initial = load_file(f"{tiny_model_dir}/model.safetensors")
    assert any(not torch.equal(a[k], initial[k]) for k in a)
