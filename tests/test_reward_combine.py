"""Calling and combining reward functions (reward_models.combine)."""

import functools
import math

import pytest
import torch

from reward_models import RewardError, RewardWarning, compute_rewards, math_correctness, reward_name

PROMPTS = ["What is 2 + 2?", "What is 3 * 3?", "What is 5 - 1?"]
COMPLETIONS = ["#### 4", "The answer is 8.", "4"]
COLUMNS = {"answer": ["4", "9", "4"]}


def constant(value):
    def reward(prompts, completions, **kwargs):
        return [value] * len(completions)

    return reward


def returning(values, name="custom"):
    def reward(prompts, completions, **kwargs):
        return list(values)

    reward.__name__ = name
    return reward


def test_weighted_sum_and_per_function_rewards():
    total, per_func = compute_rewards([math_correctness, constant(1.0)], [2.0, 0.5], PROMPTS, COMPLETIONS, COLUMNS)
    assert total.dtype == torch.float32 and total.shape == (3,)
    assert total.tolist() == [2.5, 0.5, 2.5]
    assert list(per_func) == ["math_correctness", "reward"]
    assert per_func["math_correctness"].tolist() == [1.0, 0.0, 1.0]


def test_weights_none_means_all_ones():
    total, _ = compute_rewards([math_correctness, constant(0.25)], None, PROMPTS, COMPLETIONS, COLUMNS)
    assert total.tolist() == [1.25, 0.25, 1.25]


def test_wrong_number_of_weights_raises():
    with pytest.raises(RewardError, match="3 reward weights for 2 reward functions"):
        compute_rewards([math_correctness, constant(1.0)], [1.0, 1.0, 1.0], PROMPTS, COMPLETIONS, COLUMNS)


def test_columns_reach_the_function_as_keywords():
    seen = {}

    def spy(prompts, completions, answer, level, **kwargs):
        seen.update(prompts=prompts, answer=answer, level=level, extra=kwargs)
        return [0.0] * len(completions)

    compute_rewards([spy], None, PROMPTS, COMPLETIONS, {"answer": ["4", "9", "4"], "level": [1, 2, 3]})
    assert seen == {"prompts": PROMPTS, "answer": ["4", "9", "4"], "level": [1, 2, 3], "extra": {}}


def test_chat_format_completions():
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    total, _ = compute_rewards([math_correctness], None, prompts, completions, COLUMNS)
    assert total.tolist() == [1.0, 0.0, 1.0]


def test_a_raising_function_is_named_with_prompt_and_cause():
    def broken(prompts, completions, **kwargs):
        raise KeyError("solution")

    with pytest.raises(RewardError, match="'broken' raised KeyError") as info:
        compute_rewards([constant(1.0), broken], None, PROMPTS, COMPLETIONS, COLUMNS)
    assert "What is 2 + 2?" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_a_missing_keyword_is_reported_as_a_call_error():
    def needs_solution(prompts, completions, solution):
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match="needs_solution") as info:
        compute_rewards([needs_solution], None, PROMPTS, COMPLETIONS, COLUMNS)
    assert isinstance(info.value.__cause__, TypeError)


def test_long_prompts_are_truncated_in_messages():
    def broken(prompts, completions, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RewardError) as info:
        compute_rewards([broken], None, ["x" * 10_000], ["c"], {})
    assert len(str(info.value)) < 1000


@pytest.mark.parametrize("values", [[1.0, 1.0], [1.0, 1.0, 1.0, 1.0], []])
def test_wrong_count_raises_with_expected_and_got(values):
    with pytest.raises(RewardError, match=rf"'custom' returned {len(values)} rewards for 3 completions"):
        compute_rewards([returning(values)], None, PROMPTS, COMPLETIONS, COLUMNS)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -math.inf])
def test_non_finite_reward_names_function_sample_and_completion(bad):
    with pytest.raises(RewardError, match="'custom' returned .* for sample 1 .*The answer is 8"):
        compute_rewards([returning([1.0, bad, 0.0])], None, PROMPTS, COMPLETIONS, COLUMNS)


def test_non_numeric_reward_raises():
    with pytest.raises(RewardError, match="'custom' returned '1.0'"):
        compute_rewards([returning([1.0, "1.0", 0.0])], None, PROMPTS, COMPLETIONS, COLUMNS)


def test_tensor_and_int_rewards_are_accepted():
    funcs = [returning(torch.tensor([1.0, 2.0, 3.0])), returning([1, True, 0], name="ints")]
    total, _ = compute_rewards(funcs, None, PROMPTS, COMPLETIONS, COLUMNS)
    assert total.tolist() == [2.0, 3.0, 3.0]


def test_none_means_not_applicable_and_is_left_out_of_the_sum():
    funcs = [returning([1.0, None, 0.5], name="a"), returning([None, 2.0, 1.0], name="b")]
    total, per_func = compute_rewards(funcs, [1.0, 10.0], PROMPTS, COMPLETIONS, COLUMNS)
    assert total.tolist() == [1.0, 20.0, 10.5]
    assert torch.isnan(per_func["a"][1]) and torch.isnan(per_func["b"][0])


def test_a_sample_no_function_applies_to_raises():
    funcs = [returning([1.0, None, None], name="a"), returning([None, 1.0, None], name="b")]
    with pytest.raises(RewardError, match="No reward function applies to sample 2"):
        compute_rewards(funcs, None, PROMPTS, COMPLETIONS, COLUMNS)


def test_a_function_returning_none_for_a_whole_batch_warns_and_is_left_out():
    # TRL's behaviour (mixed-task data, small batches); a whole *run* of None is the trainer's error (test_reward_none.py)
    with pytest.warns(RewardWarning, match="'b' returned None for every sample of a batch"):
        total, per_func = compute_rewards([constant(1.0), returning([None] * 3, name="b")], None, PROMPTS, COMPLETIONS, COLUMNS)
    assert total.tolist() == [1.0, 1.0, 1.0] and torch.isnan(per_func["b"]).all()


def test_a_single_function_returning_none_for_a_whole_batch_leaves_samples_unscored():
    with pytest.raises(RewardError, match="No reward function applies to sample 0"):
        compute_rewards([returning([None] * 3, name="b")], None, PROMPTS, COMPLETIONS, COLUMNS)


def test_duplicate_names_get_suffixes():
    _, per_func = compute_rewards([constant(1.0), constant(2.0), constant(3.0)], None, PROMPTS, COMPLETIONS, COLUMNS)
    assert list(per_func) == ["reward", "reward_1", "reward_2"]
    assert per_func["reward_2"].tolist() == [3.0] * 3


def test_reward_name_of_functions_partials_and_objects():
    class Scorer:
        def __call__(self, prompts, completions, **kwargs):
            return [0.0] * len(completions)

    assert reward_name(math_correctness) == "math_correctness"
    assert reward_name(functools.partial(math_correctness, answer=["1"])) == "math_correctness"
    assert reward_name(Scorer()) == "Scorer"


def test_inconsistent_batch_raises():
    with pytest.raises(RewardError, match="2 prompts for 3 completions"):
        compute_rewards([constant(1.0)], None, PROMPTS[:2], COMPLETIONS, COLUMNS)
    with pytest.raises(RewardError, match="Column 'answer' has 1 entries"):
        compute_rewards([constant(1.0)], None, PROMPTS, COMPLETIONS, {"answer": ["4"]})
    with pytest.raises(RewardError, match="No reward functions"):
        compute_rewards([], None, PROMPTS, COMPLETIONS, COLUMNS)
