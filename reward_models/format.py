"""Format reward: does the whole completion look like a final answer in the expected form?

A small shaping term used beside correctness, as in DeepSeek-R1's "format reward"
(DeepSeek-AI 2025, arXiv 2501.12948) and TRL's GRPO examples: it rewards the shape of
the answer, not its value, so it should carry a smaller weight than correctness.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from reward_models._text import completion_text
from reward_models.math import DECIMAL

# A number as it may appear in a final answer: "-$1,234.50", "3/4", "\frac{3}{4}".
_NUMBER = rf"-?\$?-?(?:{DECIMAL})(?:/\d+)?"
_LATEX_NUMBER = rf"(?:{_NUMBER}|-?\\[dt]?frac\{{{_NUMBER}\}}\{{{_NUMBER}\}})"

DEFAULT_FORMAT_PATTERN = (
    rf"(?:(?:(?i:the\s+answer\s+is):?|####)\s*)?{_NUMBER}\.?"  # "The answer is 18." / "#### 18" / "18"
    rf"|\$?\\boxed\{{{_LATEX_NUMBER}\}}\$?\.?"  # "\boxed{18}", "$\boxed{\frac{3}{4}}$"
)


def _compile(pattern: str | re.Pattern) -> re.Pattern:
    # DOTALL so that ".*" in a custom pattern spans the lines of a multi-line completion.
    return re.compile(pattern, re.DOTALL) if isinstance(pattern, str) else pattern


def _fully_matches(pattern: re.Pattern, completions: list) -> list[float]:
    return [1.0 if pattern.fullmatch(completion_text(c).strip()) else 0.0 for c in completions]


def format_reward(
    prompts: list, completions: list, pattern: str | re.Pattern = DEFAULT_FORMAT_PATTERN, **kwargs
) -> list[float]:
    """1.0 where the stripped completion *fully* matches ``pattern``, else 0.0.

    The default accepts an optional "The answer is" or "####" marker then a number
    (sign, ``$``, thousands separators, decimals, ``a/b``, trailing period), or
    ``\\boxed{number}``. Anything else around the answer (reasoning, a second number)
    fails a full match, which is the point: it asks for a bare final answer.
    """
    return _fully_matches(_compile(pattern), completions)  # re caches compiled patterns


def make_format_reward(pattern: str | re.Pattern, name: str = "format_reward") -> Callable[..., list[float]]:
    """A format reward for a custom ``pattern`` (compiled once), named ``name`` for logging.

    >>> think = make_format_reward(r"<think>.*?</think>\\s*#### -?\\d+", name="think_format")
    >>> think(prompts=["q"], completions=["<think>2+2</think> #### 4"])
    [1.0]
    """
    compiled = _compile(pattern)

    def reward(prompts: list, completions: list, **kwargs) -> list[float]:
        return _fully_matches(compiled, completions)

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = f"1.0 where the stripped completion fully matches {compiled.pattern!r}, else 0.0."
    return reward
