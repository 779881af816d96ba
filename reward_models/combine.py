"""Calling several reward functions on a batch and combining them into one reward per sample.

The convention is TRL's (``trl/trainer/grpo_trainer.py``, ``_calculate_rewards``): a
reward function is ``f(prompts, completions, **columns) -> list[float | None]`` where
``columns`` are the dataset's other columns, one entry per completion, and ``None``
means "this reward does not apply to this sample". The total is the weighted sum over
functions ignoring the ``None`` entries (TRL's ``nansum``).

Everything a reward function can get wrong (raising, a wrong count, NaN or inf, no
opinion at all) is turned into one ``RewardError`` that names the function and the
sample, so a bad reward stops the run at its first step instead of poisoning training.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence

import torch

from reward_models._text import preview

RewardFunc = Callable[..., Sequence[float | None]]


class RewardError(ValueError):
    """A reward function failed, or returned rewards that cannot be trained on.

    The message is one paragraph naming the function, the sample at fault (its index
    and a truncated view of its prompt or completion) and what to change. When the
    function itself raised, the original exception is chained as ``__cause__``.
    """


def reward_name(fn: Callable) -> str:
    """The name a reward is logged under: a function's ``__name__``, a partial's
    function's name, or the class name of a callable object."""
    if isinstance(fn, functools.partial):
        return reward_name(fn.func)
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def unique_reward_names(reward_funcs: Sequence[Callable]) -> list[str]:
    """``reward_name`` of each function; repeats get ``_1``, ``_2``, ... (``f, f, f -> f, f_1, f_2``)."""
    names: list[str] = []
    for fn in reward_funcs:
        base, candidate, k = reward_name(fn), reward_name(fn), 0
        while candidate in names:
            k += 1
            candidate = f"{base}_{k}"
        names.append(candidate)
    return names


def _check_batch(prompts: Sequence, completions: Sequence, columns: dict[str, Sequence]) -> None:
    n = len(completions)
    if len(prompts) != n:
        raise RewardError(
            f"Got {len(prompts)} prompts for {n} completions; pass one prompt per completion "
            f"(repeat a prompt for each of its group's completions)."
        )
    for key, column in columns.items():
        if key in ("prompts", "completions"):
            raise RewardError(
                f"Column {key!r} clashes with the argument of the same name passed to every reward function; "
                f"rename the dataset column."
            )
        if len(column) != n:
            raise RewardError(
                f"Column {key!r} has {len(column)} entries for {n} completions; every column passed to the "
                f"reward functions needs one entry per completion."
            )


def _weight_tensor(weights: Sequence[float] | None, names: list[str]) -> torch.Tensor:
    if weights is None:
        return torch.ones(len(names))
    if len(weights) != len(names):
        raise RewardError(
            f"Got {len(weights)} reward weights for {len(names)} reward functions {names}; pass one weight "
            f"per function, in the same order, or weights=None to weight each by 1.0."
        )
    tensor = torch.as_tensor(list(weights), dtype=torch.float32)  # (F,)
    if not torch.isfinite(tensor).all():
        raise RewardError(f"Reward weights must be finite numbers, got {list(weights)} for {names}.")
    return tensor


def _call(fn: Callable, name: str, prompts: Sequence, completions: Sequence, columns: dict) -> list:
    try:
        rewards = fn(prompts=prompts, completions=completions, **columns)
    except Exception as error:
        raise RewardError(
            f"Reward function {name!r} raised {type(error).__name__}: {error} (while scoring {len(completions)} "
            f"completions; first prompt: {preview(prompts[0]) if len(prompts) else 'none'}). Reward functions are called "
            f"as f(prompts=..., completions=..., **columns) with columns {sorted(columns)}: check that it accepts these "
            f"keywords (end its signature with **kwargs) and handles every completion, returning None where it does not apply."
        ) from error
    if hasattr(rewards, "tolist") and not isinstance(rewards, (list, tuple)):
        rewards = rewards.tolist()  # a torch tensor or numpy array of rewards
    if not isinstance(rewards, Sequence) or isinstance(rewards, (str, bytes)):
        raise RewardError(
            f"Reward function {name!r} returned {type(rewards).__name__}, not a list of floats; "
            f"it must return one float (or None) per completion."
        )
    if len(rewards) != len(completions):
        raise RewardError(
            f"Reward function {name!r} returned {len(rewards)} rewards for {len(completions)} completions (expected "
            f"{len(completions)}, got {len(rewards)}); it must return one float, or None for 'does not apply', "
            f"per completion, in order."
        )
    return list(rewards)


def _as_float(value, name: str, index: int, completions: Sequence) -> float:
    """One returned reward as a float; ``None`` becomes NaN, the marker of "does not apply"."""
    if value is None:
        return float("nan")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real):  # also rejects strings such as "1.0"
        raise RewardError(
            f"Reward function {name!r} returned {value!r} ({type(value).__name__}) for sample {index} "
            f"(completion: {preview(completions[index])}); rewards must be floats, or None where the reward "
            f"does not apply."
        )
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):  # NaN is the only value != itself
        raise RewardError(
            f"Reward function {name!r} returned {value} for sample {index} (completion: {preview(completions[index])}); "
            f"rewards must be finite. Return None if this reward does not apply to the sample, or guard the computation "
            f"that produced {value} (a division by zero, a log of 0, an overflow)."
        )
    return value


def _check_coverage(stacked: torch.Tensor, names: list[str], completions: Sequence) -> None:
    """Every function scores some sample, and every sample is scored by some function."""
    missing = torch.isnan(stacked)  # (F, N)
    for name, row in zip(names, missing):
        if row.all():
            raise RewardError(
                f"Reward function {name!r} returned None for all {row.numel()} samples of the batch, so it "
                f"scored nothing. None means 'does not apply to this sample'; if the function never applies "
                f"to this data, remove it from the reward functions, otherwise check the columns it reads."
            )
    unscored = missing.all(dim=0).nonzero().flatten()
    if len(unscored):
        i = int(unscored[0])
        raise RewardError(
            f"No reward function applies to sample {i} (completion: {preview(completions[i])}): all of "
            f"{names} returned None for it, so its reward is undefined. Make at least one reward function "
            f"return a float for every sample."
        )


def compute_rewards(
    reward_funcs: Sequence[RewardFunc],
    weights: Sequence[float] | None,
    prompts: Sequence,
    completions: Sequence,
    columns: dict[str, Sequence] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Score a batch with every reward function and sum them with ``weights``.

    Returns ``(total, per_func)``: ``total`` is float32 of shape (N,) with
    ``total[i] = nansum_f weights[f] * reward[f, i]`` (TRL's ``nansum``, so a ``None``
    counts as "not applicable", not as 0 pulled into a mean); ``per_func`` maps each
    unique reward name to its (N,) float32 rewards, NaN where it returned ``None``.
    Raises ``RewardError`` for anything unusable (see the module docstring).
    """
    columns = dict(columns or {})
    reward_funcs = list(reward_funcs)
    if not reward_funcs:
        raise RewardError(
            "No reward functions given; pass at least one f(prompts, completions, **columns) -> list[float]."
        )
    _check_batch(prompts, completions, columns)
    names = unique_reward_names(reward_funcs)
    weight = _weight_tensor(weights, names)  # (F,)
    per_func: dict[str, torch.Tensor] = {}
    for name, fn in zip(names, reward_funcs):
        rewards = _call(fn, name, prompts, completions, columns)
        values = [_as_float(r, name, i, completions) for i, r in enumerate(rewards)]
        per_func[name] = torch.tensor(values, dtype=torch.float32)  # (N,)
    if not completions:
        return torch.zeros(0), per_func
    stacked = torch.stack(list(per_func.values()))  # (F, N)
    _check_coverage(stacked, names, completions)
    total = torch.nansum(stacked * weight[:, None], dim=0)  # (N,)
    return total, per_func
