"""GSM8K (Cobbe et al. 2021, arXiv 2110.14168): grade-school math word problems.

Each raw row has a ``question`` and an ``answer``: a worked solution whose last line is
``#### <number>``. ``load_gsm8k`` turns it into prompt rows for RL:

- ``prompt``: the question followed by ``GSM8K_INSTRUCTION``, which asks for the same
  ``####`` line, so ``reward_models.math.math_correctness`` can read the model's answer;
- ``answer``: the gold number as a string, thousands separators removed (``"70000"``);
- ``solution``: the original worked solution.
"""

from __future__ import annotations

import os

from datasets import Dataset

from llm_rl.data.prompts import PromptDataError, load_source

GSM8K_HUB_NAME = "openai/gsm8k"
GSM8K_MARKER = "####"
GSM8K_INSTRUCTION = "Solve the problem step by step, then write the final answer as a number on the last line, after '####'."


def gsm8k_gold_answer(solution: str) -> str | None:
    """The number after the last ``####`` of a GSM8K solution, commas removed; None if absent.

    >>> gsm8k_gold_answer("So he made 70,000\\n#### 70,000")
    '70000'
    """
    if GSM8K_MARKER not in solution:
        return None
    answer = solution.rpartition(GSM8K_MARKER)[2].strip().replace(",", "")
    return answer or None


def format_gsm8k(raw: Dataset, where: str = "GSM8K") -> Dataset:
    """``question``/``answer`` rows -> ``prompt``/``answer``/``solution`` rows (see module docstring)."""
    missing = [c for c in ("question", "answer") if c not in raw.column_names]
    if missing:
        raise PromptDataError(
            f"{where} is missing the field(s) {missing}; its columns are {raw.column_names}. GSM8K rows need "
            f"'question' and 'answer' (a solution ending in '#### <number>'). For other data use load_prompts."
        )
    questions, solutions = raw["question"], raw["answer"]
    answers = []
    for row, solution in enumerate(solutions):
        gold = gsm8k_gold_answer(solution) if isinstance(solution, str) else None
        if gold is None:
            raise PromptDataError(
                f"Row {row} of {where} has no '#### <number>' line in its answer: {solution!r:.120}. "
                f"Fix or drop that row."
            )
        answers.append(gold)
    prompts = [f"{question.strip()}\n{GSM8K_INSTRUCTION}" for question in questions]
    return Dataset.from_dict({"prompt": prompts, "answer": answers, "solution": solutions})


def load_gsm8k(source: str = GSM8K_HUB_NAME, split: str = "train", name: str | None = "main") -> Dataset:
    """GSM8K prompt rows from the Hub (needs network or a cache) or from local files.

    ``source``: a Hub name, a jsonl file (``split`` ignored), or a folder holding
    ``{split}.jsonl``. ``name`` is the Hub config (``"main"`` or ``"socratic"``).
    """
    raw = load_source(source, split=split, name=name)
    return format_gsm8k(raw, where=f"GSM8K data {os.fspath(source)!r}")
