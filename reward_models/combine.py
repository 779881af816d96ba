"""Calling several reward functions on a batch and combining them into one reward per sample.

The convention is TRL's (``trl/trainer/grpo_trainer.py``, ``_calculate_rewards``): a
reward function is ``f(prompts, completions, **columns) -> list[float | None]`` where
``columns`` are the dataset's other columns, one entry per completion, and ``None``
means "this reward does not apply to this sample". The total is the weighted sum over
functions ignoring the ``None`` entries (TRL's ``nansum``).

Besides the columns, a function gets ``completion_ids`` (one list of token ids per
completion, EOS and padding excluded) and ``trainer_state`` (a ``TrainerState``) when the
caller has them and the function accepts them (``**kwargs``, or parameters of those names),
as in TRL. ``async def`` functions, a thread pool and timeouts: see ``reward_models.calling``.

Everything a reward function can get wrong (raising, timing out, a wrong count, NaN or
inf) is turned into one ``RewardError`` that names the function and the sample, so a bad
reward stops the run at its first step instead of poisoning training. ``None`` means
"does not apply": a function may return it for every sample of a batch (mixed-task data,
small batches), which warns once (``RewardWarning``) and leaves the function out of that
batch, as TRL does; a *sample* that no function applies to has no reward and is an error.
Whether a function returned ``None`` for a whole run is the trainer's check (``score``).
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable, Sequence

import torch

from reward_models._text import preview
from reward_models.calling import RewardCall, TrainerState, accepted_keywords, is_async, run_calls, split_groups

RewardFunc = Callable[..., Sequence[float | None]]


class RewardError(ValueError):
    """A reward function failed, or returned rewards that cannot be trained on.

    The message is one paragraph naming the function, the sample at fault (its index
    and a truncated view of its prompt or completion) and what to change. When the
    function itself raised, the original exception is chained as ``__cause__``.
    """


class RewardModelNotFoundError(RewardError, FileNotFoundError):
    """A reward model folder that does not exist or holds no saved model (a ``RewardError`` and a ``FileNotFoundError``)."""


class RewardWarning(UserWarning):
    """A reward function returned ``None`` for a whole batch: it is left out of that batch (TRL's behaviour)."""


RESERVED_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state")


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
        if key in RESERVED_KEYWORDS:
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


def _where(call: RewardCall, prompts: Sequence, total: int) -> str:
    rows = f"sample {call.start}" if call.stop - call.start == 1 else f"samples {call.start}-{call.stop - 1}"
    first = preview(prompts[call.start]) if call.stop > call.start else "none"
    return f"while scoring {rows} of {total}; first prompt: {first}"


def _failure(call: RewardCall, outcome: tuple, prompts: Sequence, total: int, timeout: float | None) -> RewardError:
    kind, error = outcome
    where = _where(call, prompts, total)
    if kind == "timeout":
        return RewardError(
            f"Reward function {call.name!r} did not return within reward_timeout={timeout} s ({where}). Raise "
            f"reward_timeout (--reward_timeout), make the function faster, or run a slow one concurrently (async def, "
            f"or reward_num_workers); a plain function that timed out runs on in its thread until it returns."
        )
    if kind == "not run":
        return RewardError(f"Reward function {call.name!r} was not run ({where}): another call of the batch timed out first.")
    keywords = sorted(k for k in call.kwargs if k not in ("prompts", "completions"))
    return RewardError(
        f"Reward function {call.name!r} raised {type(error).__name__}: {error} ({where}). Reward functions are called "
        f"as f(prompts=..., completions=..., **columns) with columns and keywords {keywords}: check that it accepts "
        f"these keywords (end its signature with **kwargs) and handles every completion, returning None where it does not apply."
    )


def _checked(rewards, name: str, count: int) -> list:
    """``rewards`` as a list of ``count`` entries, or a ``RewardError`` saying what is wrong."""
    if hasattr(rewards, "tolist") and not isinstance(rewards, (list, tuple)):
        rewards = rewards.tolist()  # a torch tensor or numpy array of rewards
    if not isinstance(rewards, Sequence) or isinstance(rewards, (str, bytes)):
        raise RewardError(
            f"Reward function {name!r} returned {type(rewards).__name__}, not a list of floats; "
            f"it must return one float (or None) per completion."
        )
    if len(rewards) != count:
        raise RewardError(
            f"Reward function {name!r} returned {len(rewards)} rewards for {count} completions (expected "
            f"{count}, got {len(rewards)}); it must return one float, or None for 'does not apply', "
            f"per completion, in order."
        )
    return list(rewards)


def _calls(reward_funcs, names, prompts, completions, columns, optional, num_workers, group_size) -> list[RewardCall]:
    """One call per function; on a thread pool, each plain function's batch is cut into parts of whole groups.

    ``num_workers // (plain functions)`` parts each (at least one), so the batch's plain calls
    fill the pool once: 4 functions on 8 threads make 2 parts each, 1 function makes 8.
    """
    calls = []
    n = len(completions)
    plain = sum(not is_async(fn) for fn in reward_funcs)
    per_function = max(1, num_workers // max(1, plain))
    for name, fn in zip(names, reward_funcs):
        extras = accepted_keywords(fn, optional)
        parts = [(0, n)] if is_async(fn) or per_function == 1 else split_groups(n, group_size, per_function)
        for start, stop in parts:
            whole = (start, stop) == (0, n)
            cut = (lambda values: values) if whole else (lambda values, a=start, b=stop: values[a:b])
            kwargs = {"prompts": cut(prompts), "completions": cut(completions)}
            kwargs.update({k: cut(v) for k, v in columns.items()})
            kwargs.update({k: (v if k == "trainer_state" else cut(v)) for k, v in extras.items()})
            calls.append(RewardCall(fn, name, start, stop, kwargs))
    return calls


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
    """Every sample is scored by some function; a function that scores nothing in this batch warns.

    The warning's text names only the function, so Python's default filter shows it once per
    function and process, not at every step.
    """
    missing = torch.isnan(stacked)  # (F, N)
    unscored = missing.all(dim=0).nonzero().flatten()
    if len(unscored):
        i = int(unscored[0])
        raise RewardError(
            f"No reward function applies to sample {i} (completion: {preview(completions[i])}): all of "
            f"{names} returned None for it, so its reward is undefined. Make at least one reward function "
            f"return a float for every sample."
        )
    for name, row in zip(names, missing):
        if row.all():
            warnings.warn(
                f"Reward function {name!r} returned None for every sample of a batch: it does not apply to any of "
                f"them, so it is left out of that batch's rewards (NaN in reward/{name}), as TRL does. If it never "
                f"applies to this data, remove it from the reward functions, otherwise check the columns it reads.",
                RewardWarning,
                stacklevel=3,
            )


def compute_rewards(
    reward_funcs: Sequence[RewardFunc],
    weights: Sequence[float] | None,
    prompts: Sequence,
    completions: Sequence,
    columns: dict[str, Sequence] | None = None,
    *,
    completion_ids: Sequence[list[int]] | None = None,
    trainer_state: TrainerState | None = None,
    num_workers: int = 0,
    timeout: float | None = None,
    group_size: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Score a batch with every reward function and sum them with ``weights``.

    Returns ``(total, per_func)``: ``total`` is float32 of shape (N,) with
    ``total[i] = nansum_f weights[f] * reward[f, i]`` (TRL's ``nansum``, so a ``None``
    counts as "not applicable", not as 0 pulled into a mean); ``per_func`` maps each
    unique reward name to its (N,) float32 rewards, NaN where it returned ``None``.
    ``completion_ids`` and ``trainer_state`` reach the functions that accept them;
    ``num_workers``, ``timeout`` and ``group_size`` (rows ``[i*G:(i+1)*G]`` share a prompt;
    parts given to the thread pool hold whole groups) are described in ``reward_models.calling``.
    Raises ``RewardError`` for anything unusable (see the module docstring).
    """
    columns = dict(columns or {})
    reward_funcs = list(reward_funcs)
    if not reward_funcs:
        raise RewardError(
            "No reward functions given; pass at least one f(prompts, completions, **columns) -> list[float]."
        )
    optional = {"completion_ids": completion_ids, "trainer_state": trainer_state}
    optional = {k: v for k, v in optional.items() if v is not None}
    _check_batch(prompts, completions, columns)
    if completion_ids is not None and len(completion_ids) != len(completions):
        raise RewardError(f"Got {len(completion_ids)} completion_ids for {len(completions)} completions; pass one list per completion.")
    names = unique_reward_names(reward_funcs)
    weight = _weight_tensor(weights, names)  # (F,)
    calls = _calls(reward_funcs, names, prompts, completions, columns, optional, num_workers, group_size)
    outcomes = run_calls(calls, num_workers=num_workers, timeout=timeout)
    rewards: dict[str, list] = {name: [] for name in names}
    for call, outcome in zip(calls, outcomes):  # the first failure in function order is the one reported
        if outcome[0] != "ok":
            raise _failure(call, outcome, prompts, len(completions), timeout) from (outcome[1] if outcome[0] == "raised" else None)
        rewards[call.name] += _checked(outcome[1], call.name, call.stop - call.start)
    per_func: dict[str, torch.Tensor] = {}
    for name in names:
        values = [_as_float(r, name, i, completions) for i, r in enumerate(rewards[name])]
        per_func[name] = torch.tensor(values, dtype=torch.float32)  # (N,)
    if not completions:
        return torch.zeros(0), per_func
    stacked = torch.stack(list(per_func.values()))  # (F, N)
    _check_coverage(stacked, names, completions)
    total = torch.nansum(stacked * weight[:, None], dim=0)  # (N,)
    return total, per_func
