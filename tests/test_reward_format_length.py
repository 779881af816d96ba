"""The format reward and the overlong length penalty."""

import pytest

from reward_models import format_reward, make_format_reward, make_length_penalty, overlong_penalty, reward_name

WELL_FORMED = [
    "18",
    "The answer is 18.",
    "the answer is: 1,234",
    "#### 18",
    "#### -3",
    "$18.00",
    "2.5",
    "3/4",
    "\\boxed{18}",
    "$\\boxed{\\frac{3}{4}}$",
    "  42\n",  # surrounding whitespace is stripped
]
MALFORMED = [
    "", "abc", "18 apples", "The answer is 18 or 19", "#### 18 #### 19", "\\boxed{x}", "1+1", "I think 18", "18..", "1,23",
]  # fmt: skip


def test_format_reward_accepts_final_answer_forms():
    assert format_reward(prompts=None, completions=WELL_FORMED) == [1.0] * len(WELL_FORMED)


def test_format_reward_rejects_everything_else():
    assert format_reward(prompts=None, completions=MALFORMED) == [0.0] * len(MALFORMED)


def test_format_reward_reads_chat_completions():
    completions = [[{"role": "assistant", "content": "#### 7"}], [{"role": "assistant", "content": "seven"}]]
    assert format_reward(prompts=None, completions=completions) == [1.0, 0.0]


def test_make_format_reward_uses_the_pattern_and_is_named():
    think = make_format_reward(r"<think>.*?</think>\s*#### -?\d+", name="think_format")
    completions = ["<think>2 +\n2</think> #### 4", "#### 4", "<think>x</think> four"]
    assert think(prompts=None, completions=completions) == [1.0, 0.0, 0.0]
    assert think.__name__ == "think_format" and reward_name(think) == "think_format"
    assert reward_name(make_format_reward(r"\d+")) == "format_reward"


@pytest.mark.parametrize(
    "length, expected",
    [(0, 0.0), (10, 0.0), (11, -0.1), (15, -0.5), (19, -0.9), (20, -1.0), (1000, -1.0)],
)
def test_overlong_penalty_is_zero_then_linear_then_flat(length, expected):
    assert overlong_penalty(length, max_length=10) == pytest.approx(expected)


def test_length_penalty_counts_characters_and_scales_by_penalty():
    reward = make_length_penalty(max_length=4, penalty=2.0)
    completions = ["abcd", "abcdef", "a" * 8, [{"role": "assistant", "content": "abcdef"}]]
    assert reward(prompts=None, completions=completions) == pytest.approx([0.0, -1.0, -2.0, -1.0])
    assert reward_name(reward) == "length_penalty"


def test_length_penalty_counts_tokens_with_a_tokenizer():
    class WordTokenizer:  # one token per word; a real tokenizer has the same call signature
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [0] * (len(text.split()) + (1 if add_special_tokens else 0))}

    reward = make_length_penalty(max_length=2, tokenizer=WordTokenizer())
    completions = ["one two", "one two three", "a much longer answer here"]
    assert reward(prompts=None, completions=completions) == pytest.approx([0.0, -0.5, -1.0])


@pytest.mark.parametrize("kwargs", [{"max_length": 0}, {"max_length": 10, "penalty": -1.0}])
def test_length_penalty_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        make_length_penalty(**kwargs)
