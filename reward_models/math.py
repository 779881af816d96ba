"""Exact-match correctness of a final numeric answer: the verifiable reward of math RL.

The final answer is read from the first marker found, in this order:

1. ``#### 18``: the GSM8K answer line (Cobbe et al. 2021, arXiv 2110.14168);
2. ``\\boxed{18}``: the MATH convention (Hendrycks et al. 2021, arXiv 2103.03874);
3. ``The answer is 18``: the chain-of-thought exemplars' phrasing (Wei et al. 2022,
   arXiv 2201.11903), also ``Answer: 18``;

and otherwise it is the last number in the text. Numbers may carry a sign, ``$``,
thousands separators, decimals, a ``a/b`` or ``\\frac{a}{b}`` fraction, and a trailing
sentence period. They are compared as exact ``fractions.Fraction`` values, so ``0.75``
equals ``3/4`` and ``$18.00`` equals ``18``.

Completions are untrusted model output: they are parsed with regular expressions and
``Fraction`` only, never ``eval``/``exec``/``sympify``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

from reward_models._text import completion_text

# An unsigned decimal: "1,234" (proper 3-digit groups only, so a list "1,2,3" stays
# three numbers), "18", "2.5" or ".5". A sentence-ending "18." is not a decimal.
DECIMAL = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"

_NUMBER_RE = re.compile(
    rf"""
    (?<![\w.])                  # a number starts a token: not 'x2', not the '3' of '1.2.3'
    \$?(?P<sign>[-−])?\$?       # '-3', '$18', '-$5' (also the Unicode minus sign)
    (?:
        \\[dt]?frac\s*\{{\s*(?P<frac_num>-?(?:{DECIMAL}))\s*\}}\s*\{{\s*(?P<frac_den>-?(?:{DECIMAL}))\s*\}}
      | (?P<num>{DECIMAL})(?:\ ?/\ ?(?P<den>\d+)(?![\d.]))?
    )
    """,
    re.VERBOSE,
)
_GSM8K_MARKER = "####"
_BOXED = "\\boxed{"
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|was|:|=)", re.IGNORECASE)


def _decimal(text: str) -> Fraction:
    # Fraction(Decimal) is exact; the string has already been checked by the regex.
    return Fraction(Decimal(text.replace(",", "")))


def _match_value(match: re.Match) -> Fraction | None:
    """The value of one ``_NUMBER_RE`` match; ``None`` for a zero denominator."""
    if match["frac_num"] is not None:
        numerator, denominator = _decimal(match["frac_num"]), _decimal(match["frac_den"])
    else:
        numerator = _decimal(match["num"])
        denominator = Fraction(match["den"]) if match["den"] is not None else Fraction(1)
    if denominator == 0:
        return None
    value = numerator / denominator
    return -value if match["sign"] else value


def find_numbers(text: str) -> list[Fraction]:
    """Every number in ``text``, in order of appearance."""
    values = (_match_value(m) for m in _NUMBER_RE.finditer(text))
    return [v for v in values if v is not None]


def last_boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, with nested braces (``\\boxed{\\frac{3}{4}}``)."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None  # unbalanced: the completion was cut off inside the box


def _first(numbers: list[Fraction]) -> Fraction | None:
    return numbers[0] if numbers else None


def _last(numbers: list[Fraction]) -> Fraction | None:
    return numbers[-1] if numbers else None


def extract_final_number(text: str) -> Fraction | None:
    """The final numeric answer of ``text`` as an exact ``Fraction``, or ``None`` if it has none.

    Explicit markers win over the last number (see the module docstring for their order);
    a marker followed by no number is ignored, falling through to the next rule.

    >>> extract_final_number("3 + 15 = 18 #### 18")
    Fraction(18, 1)
    >>> extract_final_number("so \\\\boxed{\\\\frac{3}{4}} of it")
    Fraction(3, 4)
    """
    if _GSM8K_MARKER in text:
        found = _first(find_numbers(text.rpartition(_GSM8K_MARKER)[2]))
        if found is not None:
            return found
    boxed = last_boxed_content(text)
    if boxed is not None:
        found = _last(find_numbers(boxed))
        if found is not None:
            return found
    markers = list(_ANSWER_IS_RE.finditer(text))
    if markers:
        found = _first(find_numbers(text[markers[-1].end() :]))
        if found is not None:
            return found
    return _last(find_numbers(text))


def _gold_value(gold: Any) -> Fraction | None:
    """A gold answer as a Fraction: numbers directly, strings (even full solutions) extracted."""
    if isinstance(gold, bool):
        raise TypeError(f"gold answer must be a number or a string, got bool {gold!r}")
    if isinstance(gold, (int, Fraction, Decimal)):
        return Fraction(gold)
    if isinstance(gold, float):
        return Fraction(repr(gold))  # the decimal the user wrote (0.1), not its binary approximation
    return extract_final_number(str(gold))


def answers_match(completion: Any, gold: Any) -> bool:
    """True when the completion's final number equals the gold answer's, exactly.

    ``completion``: a string or a chat list; ``gold``: a number, a string like ``"1,234"``
    or ``"3/4"``, or a GSM8K solution ending in ``#### 18``. Unparseable on either side
    means no match.
    """
    predicted = extract_final_number(completion_text(completion))
    expected = _gold_value(gold)
    return predicted is not None and expected is not None and predicted == expected


def math_correctness(prompts: list, completions: list, answer: list, **kwargs) -> list[float]:
    """Reward 1.0 for a completion whose final number equals ``answer``, else 0.0.

    Follows TRL's reward convention ``f(prompts, completions, **columns)``: ``answer``
    is the dataset column of gold answers, one per completion.
    """
    if len(answer) != len(completions):
        raise ValueError(f"math_correctness got {len(completions)} completions but {len(answer)} answers")
    return [1.0 if answers_match(c, a) else 0.0 for c, a in zip(completions, answer)]
