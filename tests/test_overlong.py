"""reward_models.soft_overlong_penalty: DAPO eq. 13 (arXiv 2503.14476) on completion_ids, by hand."""

import pytest

from reward_models import RewardError, compute_rewards, soft_overlong_penalty


def _ids(*lengths):
    return [list(range(n)) for n in lengths]


def test_hand_values_max_10_buffer_4():
    # free up to 10 - 4 = 6 tokens; then (6 - len) / 4 down to -1 at 10; -1 beyond
    reward = soft_overlong_penalty(max_completion_length=10, buffer=4)
    lengths = [0, 5, 6, 7, 8, 9, 10, 11, 50]
    expected = [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    assert reward(["p"] * 9, ["c"] * 9, completion_ids=_ids(*lengths)) == expected


def test_buffer_equal_to_the_limit_and_a_buffer_of_one():
    whole = soft_overlong_penalty(4, 4)  # the ramp starts at the first token
    assert whole(["p"] * 3, ["c"] * 3, completion_ids=_ids(0, 1, 4)) == [0.0, -0.25, -1.0]
    step = soft_overlong_penalty(4, 1)  # no ramp: 0 up to 3 tokens, -1 at the limit
    assert step(["p"] * 3, ["c"] * 3, completion_ids=_ids(3, 4, 5)) == [0.0, -1.0, -1.0]


def test_through_compute_rewards_with_its_name_and_the_ids_it_is_given():
    total, per_func = compute_rewards([soft_overlong_penalty(8, 2)], None, ["p", "q"], ["a", "b"],
                                      completion_ids=_ids(7, 3))
    assert total.tolist() == [-0.5, 0.0] and list(per_func) == ["soft_overlong_penalty"]


def test_without_completion_ids_the_error_says_what_is_missing():
    with pytest.raises(RewardError, match="soft_overlong_penalty.*needs completion_ids"):
        compute_rewards([soft_overlong_penalty(8, 2)], None, ["p"], ["a"])


@pytest.mark.parametrize("limit, buffer, message", [(0, 1, "max_completion_length"), (8, 0, "buffer"), (8, 9, "buffer")])
def test_bad_settings(limit, buffer, message):
    with pytest.raises(ValueError, match=message):
        soft_overlong_penalty(limit, buffer)


def test_in_a_grpo_step_it_reads_the_trainers_completion_ids(tiny_model_dir, tmp_path):
    from llm_rl import GRPOConfig, GRPOTrainer
    from llm_rl.data import arithmetic_dataset

    lengths = []

    def length_of_ids(prompts, completions, completion_ids, **kwargs):
        lengths.extend(len(ids) for ids in completion_ids)
        return [0.0] * len(completions)

    config = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_batch_size=2, num_generations=2,
                        max_completion_length=4)
    trainer = GRPOTrainer(tiny_model_dir, [length_of_ids, soft_overlong_penalty(4, 2)], args=config,
                          train_dataset=arithmetic_dataset(8))
    trainer.train()
    import json

    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    expected = sum(0.0 if n <= 2 else (2 - n) / 2 for n in lengths) / len(lengths)
    assert row["reward/soft_overlong_penalty"] == pytest.approx(expected, abs=1e-6)
