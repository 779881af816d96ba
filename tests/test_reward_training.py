"""Reward-model training: Bradley-Terry by hand, the pair data, a 2-step run loadable by LearnedReward."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from llm_rl.core import bradley_terry_loss
from llm_rl.data.arithmetic import ArithmeticSpec
from llm_rl.reward_training import (
    RewardModelConfig,
    arithmetic_preference_pairs,
    load_preference_pairs,
    split_by_prompt,
    train_reward_model,
    wrong_answer,
)
from reward_models import LearnedReward, extract_final_number, math_correctness

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


# --- Bradley-Terry loss -------------------------------------------------------------
def test_bradley_terry_equal_scores_is_log_2():
    loss, stats = bradley_terry_loss(torch.tensor([0.3, -1.0]), torch.tensor([0.3, -1.0]))
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["accuracy"].item() == 0.0  # a tie is not a correct ranking
    assert stats["margin_mean"].item() == 0.0


def test_bradley_terry_hand_values_and_accuracy():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])  # gaps 2, -1, 1
    loss, stats = bradley_terry_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(1)) + math.log1p(math.exp(-1))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["accuracy"].item() == pytest.approx(2 / 3)
    assert stats["margin_mean"].item() == pytest.approx(2 / 3)


def test_bradley_terry_margin_shifts_the_gap():
    chosen, rejected = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])
    loss, stats = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 1.0]))  # gaps 1-1=0, 3-1=2
    assert loss.item() == pytest.approx((math.log(2) + math.log1p(math.exp(-2))) / 2, rel=1e-6)
    scalar, _ = bradley_terry_loss(chosen, rejected, margin=1.0)
    assert scalar.item() == pytest.approx(loss.item())
    assert stats["margin_mean"].item() == pytest.approx(2.0)  # the score gap, without the margin
    assert stats["accuracy"].item() == 1.0


def test_bradley_terry_is_finite_for_huge_wrong_gaps_and_has_the_sigmoid_gradient():
    chosen = torch.tensor([-200.0, 0.5], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, torch.tensor([0.0, 0.0]))
    loss.backward()
    assert loss.item() == pytest.approx((200.0 + math.log1p(math.exp(-0.5))) / 2, rel=1e-6)
    # d/dr_c of -log sigmoid(x) / N is -(1 - sigmoid(x)) / N
    assert chosen.grad.tolist() == pytest.approx([-0.5, -(1 - torch.sigmoid(torch.tensor(0.5)).item()) / 2])


def test_bradley_terry_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(N,\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        bradley_terry_loss(torch.zeros(2, 1), torch.zeros(2, 1))


# --- pair data ----------------------------------------------------------------------
def test_arithmetic_pairs_are_parseable_and_never_equal():
    pairs = arithmetic_preference_pairs(2000, seed=3)
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    assert all(c != r for c, r in zip(pairs["chosen"], pairs["rejected"]))
    assert all(c.startswith(" ") and r.startswith(" ") for c, r in zip(pairs["chosen"], pairs["rejected"]))
    assert all(int(r) >= 0 for r in pairs["rejected"])  # the default spec has no negative answers
    # The chosen answer is the one the math reward accepts, the rejected one parses to another number.
    answers = [c.strip() for c in pairs["chosen"]]
    assert math_correctness(pairs["prompt"], pairs["chosen"], answer=answers) == [1.0] * len(pairs)
    assert math_correctness(pairs["prompt"], pairs["rejected"], answer=answers) == [0.0] * len(pairs)
    assert all(extract_final_number(r) is not None for r in pairs["rejected"])
    assert arithmetic_preference_pairs(50, seed=3)["rejected"] == pairs["rejected"][:50]  # seeded


def test_wrong_answers_are_near_misses_or_digit_swaps():
    import random

    rng = random.Random(0)
    for answer in [0, 1, 9, 10, 11, 37, 81, 40]:
        for _ in range(200):
            wrong = wrong_answer(answer, rng)
            swapped = sorted(str(wrong)) == sorted(str(answer))
            assert wrong != answer and wrong >= 0 and (1 <= abs(wrong - answer) <= 10 or swapped)
    negatives = [wrong_answer(0, rng, allow_negative=True) for _ in range(200)]
    assert min(negatives) < 0  # a spec that allows negatives gets negative mistakes too
    spec = ArithmeticSpec(ops=("-",), allow_negative=True)
    assert len(arithmetic_preference_pairs(100, seed=0, spec=spec)) == 100


def test_split_holds_out_whole_prompts():
    pairs = arithmetic_preference_pairs(1000, seed=0)
    train, held_out = split_by_prompt(pairs, 0.1, seed=0)
    assert len(train) + len(held_out) == 1000 and len(held_out) > 0
    assert not set(train["prompt"]) & set(held_out["prompt"])
    assert split_by_prompt(pairs, 0.0, seed=0)[1] is None


def test_missing_columns_are_named_with_the_present_ones(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "response_a": "a", "rejected": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"\['chosen'\].*\['prompt', 'response_a', 'rejected'\]"):
        load_preference_pairs(str(path))


def test_local_jsonl_pairs_with_chats_load(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}], "source": "x"},
    ]  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = load_preference_pairs(str(path))
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "4"}]


def test_empty_and_malformed_pairs_fail_clearly(tmp_path):
    from datasets import Dataset

    empty = Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(ValueError, match="no rows"):
        load_preference_pairs(empty)
    with pytest.raises(ValueError, match="Row 1 of column 'rejected'"):
        load_preference_pairs(Dataset.from_dict({"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["z", None]}))


def test_config_validation_says_what_to_change():
    with pytest.raises(ValueError, match="learning_rate must be > 0.*eval_fraction must be in"):
        RewardModelConfig(learning_rate=0, eval_fraction=1.0)


# --- training -----------------------------------------------------------------------
def test_two_steps_write_a_reward_model_learned_reward_loads(tiny_model_dir, tmp_path):
    out = tmp_path / "rm"
    config = RewardModelConfig(
        model=tiny_model_dir, num_pairs=64, max_steps=2, per_device_batch_size=4, logging_steps=1, output_dir=str(out)
    )
    summary = train_reward_model(config)

    evaluation = json.loads((out / "eval.json").read_text())
    keys = {"pairwise_accuracy_before", "pairwise_accuracy_after", "num_pairs_train", "num_pairs_eval", "num_processes"}
    assert keys <= set(evaluation) and evaluation == summary
    assert evaluation["num_pairs_train"] + evaluation["num_pairs_eval"] == 64 and evaluation["num_pairs_eval"] > 0
    assert 0 <= evaluation["pairwise_accuracy_after"] <= 1 and evaluation["num_processes"] == 1
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(math.isfinite(line["loss"]) and 0 <= line["accuracy"] <= 1 for line in lines)

    reward = LearnedReward(out / "final", device="cpu", max_length=config.max_length)
    scores = reward(["What is 2 + 3? Answer:"] * 2, [" 5", " 6"])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores) and scores[0] != scores[1]

    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        train_reward_model(config)


def test_recipe_help_lists_the_options(capsys):
    sys.path.insert(0, str(RECIPES))
    try:
        with pytest.raises(SystemExit):
            __import__("train_reward_model").main(["--help"])
    finally:
        sys.path.remove(str(RECIPES))
    text = capsys.readouterr().out
    for option in ("--model", "--dataset", "--num_pairs", "--eval_fraction", "--learning_rate", "--max_steps", "--output_dir"):
        assert option in text
