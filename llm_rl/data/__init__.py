"""Prompt data: the built-in tasks (arithmetic, GSM8K) and user prompt datasets.

``load_task`` is the one entry point a recipe or CLI needs: it maps a ``--dataset``
value to a checked prompt ``Dataset`` whose extra columns (``answer``, ...) reach the
reward functions.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from llm_rl.data.arithmetic import ArithmeticSpec, arithmetic_dataset, greedy_accuracy, heldout_arithmetic
from llm_rl.data.gsm8k import load_gsm8k
from llm_rl.data.prompts import PromptDataError, is_chat, load_prompts, load_source, render_prompt


def _is_gsm8k_path(dataset: str, split: str) -> bool:
    """A local file or folder named like GSM8K (``gsm8k/test.jsonl``) with question/answer fields."""
    path = Path(dataset).expanduser()
    if not path.exists() or not any("gsm8k" in part.lower() for part in (path.name, path.parent.name)):
        return False
    return {"question", "answer"} <= set(load_source(path, split=split).column_names)


def load_task(
    dataset: str | Dataset,
    split: str = "train",
    prompt_column: str = "prompt",
    tokenizer=None,
    max_prompt_length: int | None = None,
    long_prompts: str = "error",
    num_arithmetic: int = 20_000,
    seed: int = 0,
) -> Dataset:
    """A checked prompt dataset for ``dataset``.

    ``"arithmetic"``: ``num_arithmetic`` seeded synthetic problems; ``"gsm8k"``: GSM8K
    from the Hub; a local file or folder named like GSM8K with ``question``/``answer``
    fields: GSM8K from it; anything else: ``load_prompts`` with ``prompt_column``.
    The length and chat-template checks of ``load_prompts`` apply to all of them.
    """
    checks = dict(tokenizer=tokenizer, max_prompt_length=max_prompt_length, long_prompts=long_prompts)
    if dataset == "arithmetic":
        return load_prompts(arithmetic_dataset(num_arithmetic, seed), **checks)
    if dataset == "gsm8k":
        return load_prompts(load_gsm8k(split=split), **checks)
    if isinstance(dataset, str) and _is_gsm8k_path(dataset, split):
        return load_prompts(load_gsm8k(dataset, split=split), **checks)
    return load_prompts(dataset, split=split, prompt_column=prompt_column, **checks)


__all__ = [
    "ArithmeticSpec",
    "PromptDataError",
    "arithmetic_dataset",
    "greedy_accuracy",
    "heldout_arithmetic",
    "is_chat",
    "load_gsm8k",
    "load_prompts",
    "load_task",
    "render_prompt",
]
