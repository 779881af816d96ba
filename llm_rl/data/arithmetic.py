"""The synthetic arithmetic task: the embedded default of the recipes and tests.

Problems read ``What is 47 + 38? Answer:`` and the expected completion is `` 85``
followed by EOS. With the default knobs the task has 772 distinct problems. Two fixed
evaluation sets measure greedy accuracy before and after RL:

- ``heldout_arithmetic``: 200 draws from the whole task (its own seed). Training draws
  from the same small space, so this ``accuracy`` measures how well the task is solved,
  not generalisation.
- ``unseen_arithmetic``: 200 draws restricted to the *unseen* split, a fixed 15% of the
  problem space (``unseen_problems``) that ``arithmetic_dataset`` never yields by
  default, so neither the tiny model's warm start nor RL prompts contain them. Its
  ``accuracy_unseen`` measures generalisation to problems never trained on.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from datasets import Dataset

HELDOUT_SEED = 20_240_229
HELDOUT_SIZE = 200
UNSEEN_SEED = 20_261_130  # fixes which problems are unseen; changing it invalidates the tiny model's warm start
UNSEEN_DRAWS_SEED = 20_261_201  # seeds the draws of the unseen evaluation set
UNSEEN_FRACTION = 0.15
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


def problem_space(spec: ArithmeticSpec = ArithmeticSpec()) -> dict[str, list[str]]:
    """Every distinct problem's prompt, per operator, in a fixed order (772 in all by default)."""
    space: dict[str, list[str]] = {}
    for op in spec.ops:
        top = spec.max_mul_operand if op == "*" else spec.max_operand
        pairs = [(a, b) for a in range(top + 1) for b in range(top + 1)]
        if op == "-" and not spec.allow_negative:
            pairs = [(a, b) for a, b in pairs if a >= b]  # make_problem swaps a < b
        space[op] = [PROMPT_TEMPLATE.format(a=a, op=op, b=b) for a, b in pairs]
    return space


@functools.cache
def unseen_problems(spec: ArithmeticSpec = ArithmeticSpec()) -> frozenset[str]:
    """The prompts of the unseen split: ``UNSEEN_FRACTION`` of each operator's problems, fixed.

    Stratified per operator (66 of 441 ``+``, 35 of 231 ``-``, 15 of 100 ``*`` by default:
    116 of 772), so draws restricted to it keep the task's one-third share of each operator.
    """
    rng = random.Random(UNSEEN_SEED)
    chosen: set[str] = set()
    for prompts in problem_space(spec).values():
        chosen.update(rng.sample(prompts, round(UNSEEN_FRACTION * len(prompts))))
    return frozenset(chosen)


def _draw(rng: random.Random, spec: ArithmeticSpec, keep: Callable[[dict], bool]) -> dict:
    """``make_problem`` redrawn until ``keep`` accepts: the task's distribution conditioned on ``keep``."""
    while True:
        problem = make_problem(rng, spec)
        if keep(problem):
            return problem


def arithmetic_dataset(
    n: int, seed: int = 0, spec: ArithmeticSpec = ArithmeticSpec(), include_unseen: bool = False
) -> Dataset:
    """``n`` seeded problems as a ``datasets.Dataset`` with ``prompt`` and ``answer`` columns.

    Problems of the unseen split are never drawn unless ``include_unseen`` (see the module
    docstring): these are the prompts for training, warm start and RL alike.
    """
    rng = random.Random(seed)
    unseen = frozenset() if include_unseen else unseen_problems(spec)
    return Dataset.from_list([_draw(rng, spec, lambda p: p["prompt"] not in unseen) for _ in range(n)])


def heldout_arithmetic(n: int = HELDOUT_SIZE, spec: ArithmeticSpec = ArithmeticSpec()) -> Dataset:
    """The fixed evaluation split of ``accuracy``: ``n`` draws from the whole task, the same on every machine.

    About 15% of its draws fall in the unseen split; the rest are problems training also draws.
    """
    rng = random.Random(HELDOUT_SEED)
    return Dataset.from_list([make_problem(rng, spec) for _ in range(n)])


def unseen_arithmetic(n: int = HELDOUT_SIZE, spec: ArithmeticSpec = ArithmeticSpec()) -> Dataset:
    """The fixed evaluation split of ``accuracy_unseen``: ``n`` draws of the task restricted to unseen problems.

    Drawn like ``heldout_arithmetic`` (same generator, so the same share of each operator and
    the same repeats of frequent problems), only conditioned on the unseen split.
    """
    rng = random.Random(UNSEEN_DRAWS_SEED)
    unseen = unseen_problems(spec)
    return Dataset.from_list([_draw(rng, spec, lambda p: p["prompt"] in unseen) for _ in range(n)])


@torch.no_grad()
def greedy_correct(model, tokenizer, dataset, batch_size: int = 200, max_new_tokens: int = 8) -> list[bool]:
    """For each row of ``dataset``, whether its greedy completion holds the right final number.

    Answers are checked by ``reward_models.math.answers_match``, which parses numbers and
    never executes model text.
    """
    from reward_models.math import answers_match

    was_training = model.training
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    correct = []
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
        correct += [answers_match(text, gold) for text, gold in zip(texts, rows["answer"])]
    model.train(was_training)
    return correct


def greedy_accuracy(model, tokenizer, dataset, batch_size: int = 200, max_new_tokens: int = 8) -> float:
    """Fraction of ``dataset`` rows whose greedy completion holds the right final number (``greedy_correct``)."""
    return sum(greedy_correct(model, tokenizer, dataset, batch_size, max_new_tokens)) / len(dataset)
