"""The synthetic arithmetic task: the embedded default of the recipes and tests.

Problems read ``What is 47 + 38? Answer:`` and the expected completion is `` 85``
followed by EOS. A seeded generator makes training prompts; a fixed held-out split
of 200 problems (its own seed) measures greedy accuracy before and after RL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from datasets import Dataset

HELDOUT_SEED = 20_240_229
HELDOUT_SIZE = 200
PROMPT_TEMPLATE = "What is {a} {op} {b}? Answer:"


@dataclass(frozen=True)
class ArithmeticSpec:
    """Difficulty knobs of the task."""

    ops: tuple[str, ...] = ("+", "-", "*")
    max_operand: int = 20  # operands of + and - are drawn from [0, max_operand]
    max_mul_operand: int = 9  # operands of * are drawn from [0, max_mul_operand]
    allow_negative: bool = False  # if False, a - b is drawn with a >= b


def make_problem(rng: random.Random, spec: ArithmeticSpec = ArithmeticSpec()) -> dict:
    op = rng.choice(spec.ops)
    if op == "*":
        a, b = rng.randint(0, spec.max_mul_operand), rng.randint(0, spec.max_mul_operand)
        answer = a * b
    else:
        a, b = rng.randint(0, spec.max_operand), rng.randint(0, spec.max_operand)
        if op == "-" and not spec.allow_negative and a < b:
            a, b = b, a
        answer = a + b if op == "+" else a - b
    return {"prompt": PROMPT_TEMPLATE.format(a=a, op=op, b=b), "answer": str(answer)}


def arithmetic_dataset(n: int, seed: int = 0, spec: ArithmeticSpec = ArithmeticSpec()) -> Dataset:
    """``n`` seeded problems as a ``datasets.Dataset`` with ``prompt`` and ``answer`` columns.

    With the default knobs the task has only 772 distinct problems, so training prompts
    and the evaluation split are draws from the same small space: evaluation measures
    how well the policy solves the task, not generalisation to unseen problems.
    """
    rng = random.Random(seed)
    return Dataset.from_list([make_problem(rng, spec) for _ in range(n)])


def heldout_arithmetic(n: int = HELDOUT_SIZE, spec: ArithmeticSpec = ArithmeticSpec()) -> Dataset:
    """The fixed evaluation split: the same ``n`` problems on every machine and run."""
    rng = random.Random(HELDOUT_SEED)
    return Dataset.from_list([make_problem(rng, spec) for _ in range(n)])


@torch.no_grad()
def greedy_accuracy(model, tokenizer, dataset, batch_size: int = 200, max_new_tokens: int = 8) -> float:
    """Fraction of ``dataset`` rows whose greedy completion holds the right final number.

    Answers are checked by ``reward_models.math.answers_match``, which parses numbers and
    never executes model text.
    """
    from reward_models.math import answers_match

    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        enc = tokenizer(list(rows["prompt"]), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(answers_match(text, gold) for text, gold in zip(texts, rows["answer"]))
    model.train(was_training)
    return correct / len(dataset)
