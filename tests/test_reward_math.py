"""Final-number extraction and exact answer matching (reward_models.math)."""

from fractions import Fraction

import pytest

from reward_models import answers_match, completion_text, extract_final_number, math_correctness
from reward_models.math import last_boxed_content

EXTRACTION_CASES = [
    # markers
    ("#### 18", 18),
    ("She pays 3 * 6 = <<3*6=18>>18 dollars.\n#### 18", 18),
    ("\\boxed{18}", 18),
    ("So the total is $\\boxed{42}$.", 42),
    ("The answer is 1,234.", 1234),
    ("Answer: 7", 7),
    ("the final answer is -3", -3),
    # number formats
    ("It costs $18.00", 18),
    ("-3", -3),
    ("x = -3", -3),
    ("-$5", -5),
    ("\u22123", -3),  # the Unicode minus sign
    ("2.5", Fraction(5, 2)),
    ("about .5 of it", Fraction(1, 2)),
    ("3/4", Fraction(3, 4)),
    ("3 / 4", Fraction(3, 4)),
    ("\\frac{3}{4}", Fraction(3, 4)),
    ("-\\dfrac{1}{2}", Fraction(-1, 2)),
    ("\\boxed{\\frac{3}{4}}", Fraction(3, 4)),
    ("It is 18.", 18),
    ("1,234,567.89", Fraction(123456789, 100)),
    ("We got 50%", 50),
    # last number when there is no marker
    ("5 + 13 = 18", 18),
    ("first 3 then 4 then 5", 5),
    ("5-3", 3),  # a hyphen between digits is not a minus sign
    ("1,2,3", 3),  # not thousands groups: three numbers
    (" 85", 85),
    # nothing usable
    ("no number here", None),
    ("", None),
    ("1/0", None),
    ("v1.2.3", None),
]


@pytest.mark.parametrize("text, expected", EXTRACTION_CASES)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == (None if expected is None else Fraction(expected))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Step 1: 5 apples. Step 2: 10 apples. #### 7 (from 3 + 4)", 7),  # #### beats the last number
        ("\\boxed{12} then 99 more", 12),
        ("The answer is 12, since 3 * 4 = 12 and 99", 12),
        ("The answer is 5. Check: \\boxed{6}", 6),  # boxed beats 'answer is'
        ("\\boxed{9} #### 8", 8),  # #### beats boxed
        ("#### then 4", 4),
        ("####", None),
        ("The answer is unknown; 8 remain, not 9", 8),  # the first number after the marker
    ],
)
def test_marker_priority(text, expected):
    assert extract_final_number(text) == (None if expected is None else Fraction(expected))


def test_marker_without_number_falls_back_to_last_number():
    assert extract_final_number("I computed 41 and 42. \\boxed{x}") == 42


def test_last_boxed_content_handles_nesting_and_truncation():
    assert last_boxed_content("\\boxed{1} and \\boxed{\\frac{3}{4}}") == "\\frac{3}{4}"
    assert last_boxed_content("\\boxed{\\frac{3}{4") is None


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("0.75", "3/4"),
        ("\\frac{3}{4}", "0.75"),
        ("#### 1234", "1,234"),
        ("The answer is $18.00.", "18"),
        ("The answer is 72.", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"),
        ("-3", -3),
        ("2.5", 2.5),
        ("0.1", 0.1),  # float gold compared as the decimal written, not its binary value
        ("1/3", Fraction(1, 3)),
        ([{"role": "assistant", "content": "#### 18"}], "18"),
    ],
)
def test_answers_match(completion, gold):
    assert answers_match(completion, gold)


@pytest.mark.parametrize(
    "completion, gold",
    [("19", "18"), ("3/4", "0.7"), ("no idea", "18"), ("18", "not a number"), ("-18", "18"), ("0.33", "1/3")],
)
def test_answers_do_not_match(completion, gold):
    assert not answers_match(completion, gold)


def test_math_correctness_scores_each_completion():
    completions = ["#### 18", "The answer is 17.", "no answer", [{"role": "assistant", "content": "\\boxed{3/4}"}]]
    rewards = math_correctness(prompts=["q"] * 4, completions=completions, answer=["18", "18", "18", "0.75"])
    assert rewards == [1.0, 0.0, 0.0, 1.0]


def test_math_correctness_rejects_mismatched_answer_column():
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        math_correctness(prompts=["q", "q"], completions=["1", "2"], answer=["1"])


def test_code_in_a_completion_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # os.system returns 0 on success, so an evaluating scorer would also "match" gold "0".
    payloads = [
        "__import__('os').system('touch pwned')",
        "\\boxed{__import__('os').system('touch pwned')}",
        "#### __import__('os').system('touch pwned')",
        "The answer is eval(\"__import__('os').system('touch pwned')\")",
    ]
    rewards = math_correctness(prompts=["q"] * len(payloads), completions=payloads, answer=["0"] * len(payloads))
    assert rewards == [0.0] * len(payloads)
    assert not (tmp_path / "pwned").exists()
    assert answers_match("__import__('os').system('touch pwned')", "__import__('os').system('touch pwned')") is False
    assert not (tmp_path / "pwned").exists()


def test_completion_text_rejects_other_types():
    assert completion_text({"role": "assistant", "content": [{"type": "text", "text": "#### 3"}]}) == "#### 3"
    with pytest.raises(TypeError, match="string or a list of chat messages"):
        completion_text(18)
