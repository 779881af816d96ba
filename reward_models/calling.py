"""Running a batch's reward calls: plain, on a thread pool, or ``async``, each with an optional timeout.

TRL (``trl/trainer/grpo_trainer.py``, ``_calculate_rewards``) calls plain reward functions
one after another and awaits ``async def`` ones together with ``asyncio.gather`` on an event
loop that lives in its own thread. Here:

- ``async def`` functions (or objects with an ``async def __call__``) are awaited
  concurrently with each other and with the plain calls, on one persistent event loop in a
  daemon thread (so a client session a function keeps between steps stays on its loop);
- plain functions run in the calling thread, one after another (the default, as before), or,
  with ``num_workers >= 1``, on that many daemon threads; each function's batch is then cut
  into ``num_workers // (plain functions)`` parts of whole prompt groups (at least one), one
  call each, so the calls fill the pool once and a slow per-sample function (a sandbox, an
  HTTP verifier) is called concurrently too;
- every call may have a ``timeout`` in seconds. A timed-out coroutine is cancelled; a
  timed-out plain call cannot be stopped (Python has no way to kill a thread), so it runs
  on, in a daemon thread that never blocks the process's exit, while the step fails.

The result of each call is ``("ok", rewards)``, ``("raised", exception)`` or ``("timeout", None)``;
``combine.compute_rewards`` turns failures into a ``RewardError`` naming function and samples.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainerState:
    """What a reward function may want to know about the run (TRL passes its ``TrainerState``).

    ``global_step`` counts the steps completed before the one being scored (0 on the first),
    as TRL's ``trainer_state.global_step`` does; a curriculum reads ``global_step / max_steps``.
    """

    global_step: int
    max_steps: int
    num_processes: int = 1
    process_index: int = 0


@dataclass
class RewardCall:
    """One call of reward function ``fn`` on rows ``start:stop`` of the batch, with its keyword arguments."""

    fn: Callable
    name: str
    start: int
    stop: int
    kwargs: dict = field(repr=False)


def is_async(fn: Callable) -> bool:
    """True for an ``async def`` function, a partial of one, or an object whose ``__call__`` is ``async def``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def accepted_keywords(fn: Callable, optional: dict) -> dict:
    """The entries of ``optional`` that ``fn`` accepts: all with ``**kwargs``, else the ones it names.

    ``completion_ids`` and ``trainer_state`` are passed this way, so a reward written as
    ``f(prompts, completions, answer)`` keeps working; dataset columns are always passed.
    """
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass everything, as TRL does
        return dict(optional)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(optional)
    names = {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in optional.items() if k in names}


def split_groups(n: int, group_size: int, parts: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of up to ``parts`` contiguous row ranges of whole groups covering ``range(n)``.

    ``split_groups(8, 2, 3) -> [(0, 2), (2, 4), (4, 8)]``; with fewer groups than parts, one part per group.
    """
    groups = max(1, n // max(1, group_size)) if n else 0
    parts = max(1, min(parts, groups))
    bounds, start = [], 0
    for k in range(parts):
        stop = (groups * (k + 1) // parts) * group_size if k < parts - 1 else n
        if stop > start:
            bounds.append((start, stop))
        start = stop
    return bounds or [(0, n)]


class _LoopThread:
    """One event loop running forever in a daemon thread; coroutines are submitted to it from any thread."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="reward-event-loop", daemon=True).start()
                cls._loop = loop
            return cls._loop


async def _bounded(awaitable, timeout: float | None):
    """``("ok", value)``, ``("raised", error)`` or ``("timeout", None)`` of one awaitable.

    ``asyncio.wait`` rather than ``wait_for``: a ``TimeoutError`` the function raises itself
    (its HTTP client's, say) is its error, not ours.
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        return "timeout", None
    try:
        return "ok", task.result()
    except Exception as error:  # reported with the function's name by the caller
        return "raised", error


async def _gather(awaitables: list, timeout: float | None) -> list:
    return await asyncio.gather(*(_bounded(a, timeout) for a in awaitables))


def _submit(awaitables: list, timeout: float | None):
    """Start awaiting ``awaitables`` concurrently on the loop thread; ``_settle`` collects them."""
    return asyncio.run_coroutine_threadsafe(_gather(awaitables, timeout), _LoopThread.loop()), len(awaitables)


def _settle(submitted, timeout: float | None) -> list:
    future, n = submitted
    # _bounded cancels each coroutine at its timeout; the margin covers one that ignores cancellation
    try:
        return future.result(None if timeout is None else timeout + 5.0)
    except TimeoutError:
        future.cancel()
        return [("timeout", None)] * n


def _call_plain(call: RewardCall):
    return call.fn(**call.kwargs)


def _run_threads(calls: list[RewardCall], num_threads: int, timeout: float | None) -> list:
    """Run ``calls`` on ``num_threads`` daemon threads; returns as soon as all settled or one timed out.

    Daemon threads rather than ``concurrent.futures``: an executor's threads are joined at
    interpreter exit, so one hung reward call would keep the process from ever exiting.
    """
    n = len(calls)
    outcomes: list = [None] * n
    started: list[float | None] = [None] * n
    done = [threading.Event() for _ in range(n)]
    queue, lock = list(range(n)), threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                i = queue.pop(0)
                started[i] = time.monotonic()
            try:
                outcomes[i] = ("ok", _call_plain(calls[i]))
            except Exception as error:
                outcomes[i] = ("raised", error)
            done[i].set()

    for _ in range(max(1, min(num_threads, n))):
        threading.Thread(target=worker, name="reward-worker", daemon=True).start()
    # Calls start in index order, so when call i has not started, every earlier one has
    # finished and a thread is about to take it: polling briefly cannot deadlock.
    for i in range(n):
        while not done[i].is_set():
            if started[i] is None:
                done[i].wait(0.005)
            elif timeout is None:
                done[i].wait()
            elif not done[i].wait(max(0.0, started[i] + timeout - time.monotonic())):
                with lock:
                    queue.clear()  # the step fails: calls not started yet are not run
                outcomes[i] = ("timeout", None)
                return [o if o is not None else ("not run", None) for o in outcomes]
    return outcomes


def run_calls(calls: Sequence[RewardCall], num_workers: int = 0, timeout: float | None = None) -> list:
    """The outcome of every call, in order (see the module docstring for what runs where).

    A plain function that returns an awaitable is awaited on the loop as well.
    """
    calls = list(calls)
    outcomes: list = [None] * len(calls)
    async_index = [i for i, c in enumerate(calls) if is_async(c.fn)]
    plain_index = [i for i, c in enumerate(calls) if not is_async(c.fn)]
    awaitables = []
    for i in async_index:  # creating a coroutine runs none of its code; it can still fail on bad keywords
        try:
            awaitables.append(_call_plain(calls[i]))
        except Exception as error:
            outcomes[i] = ("raised", error)
            awaitables.append(None)
    pending = [(i, a) for i, a in zip(async_index, awaitables) if a is not None]
    submitted = _submit([a for _, a in pending], timeout) if pending else None

    plain = [calls[i] for i in plain_index]
    if num_workers == 0 and timeout is None:
        plain_outcomes = []
        for call in plain:  # in this thread, one after another, as before
            try:
                plain_outcomes.append(("ok", _call_plain(call)))
            except Exception as error:
                plain_outcomes.append(("raised", error))
    else:
        plain_outcomes = _run_threads(plain, max(1, num_workers), timeout)
    for i, outcome in zip(plain_index, plain_outcomes):
        outcomes[i] = outcome

    if submitted is not None:
        for (i, _), outcome in zip(pending, _settle(submitted, timeout)):
            outcomes[i] = outcome
    # plain functions that returned an awaitable (e.g. a sync wrapper around an async client)
    late = [i for i, o in enumerate(outcomes) if o[0] == "ok" and inspect.isawaitable(o[1])]
    if late:
        for i, outcome in zip(late, _settle(_submit([outcomes[i][1] for i in late], timeout), timeout)):
            outcomes[i] = outcome
    return outcomes
