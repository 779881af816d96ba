"""Soft penalties for overlong completions: on text (``make_length_penalty``) or tokens (``soft_overlong_penalty``).

The idea is DAPO's "soft overlong punishment" (Yu et al. 2025, arXiv 2503.14476, eq. 13):
no penalty up to a length, then a penalty growing linearly over a buffer, then the full
penalty. DAPO writes it with a hard limit ``L_max`` and a buffer ``L_cache``; here the
buffer equals the free length, ``L_cache = max_length`` and ``L_max = 2 * max_length``:

    length <= max_length                   ->  0
    max_length < length < 2 * max_length   ->  -penalty * (length - max_length) / max_length
    length >= 2 * max_length               ->  -penalty
"""

from __future__ import annotations

from collections.abc import Callable

from reward_models._text import completion_text


def overlong_penalty(length: int, max_length: int, penalty: float = 1.0) -> float:
    """The penalty for one completion of ``length`` (see the module docstring), in [-penalty, 0]."""
    excess = max(0, length - max_length)
    return -penalty * min(1.0, excess / max_length)


def make_length_penalty(max_length: int, penalty: float = 1.0, tokenizer=None) -> Callable[..., list[float]]:
    """A reward function ``length_penalty(prompts, completions, **kwargs)`` for ``overlong_penalty``.

    ``max_length`` counts characters of the completion text, or tokens when a
    ``tokenizer`` is given (encoded without special tokens, so the count is the
    completion's own length). Add it to the other rewards with a weight, or fold the
    strength into ``penalty``.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be a positive length, got {max_length}")
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0 (the reward goes down to -penalty), got {penalty}")

    def length_of(completion) -> int:
        text = completion_text(completion)
        if tokenizer is None:
            return len(text)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def length_penalty(prompts: list, completions: list, **kwargs) -> list[float]:
        return [overlong_penalty(length_of(c), max_length, penalty) for c in completions]

    unit = "tokens" if tokenizer is not None else "characters"
    length_penalty.__doc__ = f"0 up to {max_length} {unit}, then linearly down to -{penalty} at {2 * max_length}."
    return length_penalty


def soft_overlong_penalty(max_completion_length: int, buffer: int) -> Callable[..., list[float]]:
    """DAPO's soft overlong punishment on token counts (Yu et al. 2025, arXiv 2503.14476, eq. 13).

    With ``L_max = max_completion_length``, ``L_cache = buffer`` and ``|y|`` the number of
    generated tokens (``completion_ids``, EOS excluded):

        |y| <= L_max - L_cache              ->  0
        L_max - L_cache < |y| <= L_max      ->  (L_max - L_cache - |y|) / L_cache   (0 down to -1)
        |y| > L_max                         ->  -1

    Returns a reward function ``soft_overlong_penalty(prompts, completions, completion_ids, **kwargs)``;
    the trainers pass ``completion_ids``. With ``max_completion_length`` set to the trainer's,
    a completion cut off at the limit gets -1 and the last ``buffer`` tokens before it ramp down.
    """
    if max_completion_length < 1:
        raise ValueError(f"max_completion_length must be a positive number of tokens, got {max_completion_length}")
    if not 1 <= buffer <= max_completion_length:
        raise ValueError(
            f"buffer must be between 1 and max_completion_length={max_completion_length} tokens (DAPO's L_cache), got {buffer}"
        )
    free = max_completion_length - buffer

    def penalty(length: int) -> float:
        if length <= free:
            return 0.0
        if length <= max_completion_length:
            return (free - length) / buffer
        return -1.0

    def soft_overlong_penalty(prompts: list, completions: list, completion_ids: list | None = None, **kwargs) -> list[float]:
        if completion_ids is None:
            raise ValueError(
                "soft_overlong_penalty counts tokens and needs completion_ids (one list of token ids per completion); "
                "the trainers pass them, and compute_rewards(..., completion_ids=...) does when called directly"
            )
        return [penalty(len(ids)) for ids in completion_ids]

    return soft_overlong_penalty
