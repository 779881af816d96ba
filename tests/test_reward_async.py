"""Slow rewards: async functions awaited concurrently, plain ones on a thread pool, per-call timeouts.

Concurrency is checked with barriers, never with wall-clock time: a barrier that N calls must
reach together only opens when they really run at the same time (its timeout is a deadlock guard).
"""

import asyncio
import threading

import pytest

from llm_rl import GRPOConfig, GRPOTrainer
from llm_rl.trainers.config import ConfigError
from reward_models import RewardError, compute_rewards
from reward_models.calling import accepted_keywords, is_async, split_groups

PROMPTS = [f"p{i}" for i in range(8)]
COMPLETIONS = [f"c{i}" for i in range(8)]
COLUMNS = {"index": list(range(8))}


def test_split_groups_by_hand():
    assert split_groups(8, 2, 3) == [(0, 2), (2, 4), (4, 8)]
    assert split_groups(8, 2, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert split_groups(8, 4, 4) == [(0, 4), (4, 8)]  # never more parts than groups
    assert split_groups(6, 1, 1) == [(0, 6)]
    assert split_groups(0, 2, 3) == [(0, 0)]
    for n, g, k in [(12, 3, 2), (16, 2, 5), (10, 1, 3)]:
        parts = split_groups(n, g, k)
        assert parts[0][0] == 0 and parts[-1][1] == n and all(a < b for a, b in parts)
        assert all(b == c for (_, b), (c, _) in zip(parts, parts[1:]))  # contiguous
        assert all((b - a) % g == 0 for a, b in parts)  # whole groups


def test_is_async_and_accepted_keywords():
    async def a(prompts, completions, **kwargs):
        return []

    class AsyncScorer:
        async def __call__(self, prompts, completions, **kwargs):
            return []

    def strict(prompts, completions, answer):
        return []

    def named(prompts, completions, completion_ids, answer=None):
        return []

    assert is_async(a) and is_async(AsyncScorer()) and not is_async(strict)
    extras = {"completion_ids": [[1]], "trainer_state": object()}
    assert accepted_keywords(strict, extras) == {}
    assert accepted_keywords(named, extras) == {"completion_ids": [[1]]}
    assert accepted_keywords(a, extras) == extras


def index_reward(prompts, completions, index, **kwargs):
    return [float(i) for i in index]


@pytest.mark.parametrize("num_workers", [0, 1, 3, 8])
def test_thread_pool_results_stay_in_order_and_parts_hold_whole_groups(num_workers):
    sizes = []

    def recording(prompts, completions, index, **kwargs):
        sizes.append(len(completions))
        return index_reward(prompts, completions, index)

    total, per_func = compute_rewards([recording], None, PROMPTS, COMPLETIONS, COLUMNS, num_workers=num_workers, group_size=2)
    assert total.tolist() == [float(i) for i in range(8)]
    assert sum(sizes) == 8 and all(s % 2 == 0 for s in sizes)
    assert len(sizes) == (1 if num_workers <= 1 else min(num_workers, 4))


def test_thread_pool_runs_the_parts_concurrently():
    barrier = threading.Barrier(4, timeout=10)  # opens only when the 4 parts are in flight together

    def meets_the_others(prompts, completions, index, **kwargs):
        barrier.wait()
        return index_reward(prompts, completions, index)

    total, _ = compute_rewards([meets_the_others], None, PROMPTS, COMPLETIONS, COLUMNS, num_workers=4, group_size=2)
    assert total.tolist() == [float(i) for i in range(8)]


def test_the_pool_is_shared_among_plain_functions():
    barrier = threading.Barrier(4, timeout=10)  # 2 functions x 2 parts on 4 threads: all in flight together
    sizes = []

    def make(name):
        def reward(prompts, completions, index, **kwargs):
            sizes.append(len(completions))
            barrier.wait()
            return index_reward(prompts, completions, index)

        reward.__name__ = name
        return reward

    total, _ = compute_rewards([make("a"), make("b")], None, PROMPTS, COMPLETIONS, COLUMNS, num_workers=4, group_size=2)
    assert total.tolist() == [2.0 * i for i in range(8)] and sorted(sizes) == [4, 4, 4, 4]


def test_sequential_calls_would_break_that_barrier():
    barrier = threading.Barrier(2, timeout=0.5)

    def meets_the_others(prompts, completions, index, **kwargs):
        barrier.wait()
        return index_reward(prompts, completions, index)

    with pytest.raises(RewardError, match="'meets_the_others' raised BrokenBarrierError"):
        compute_rewards([meets_the_others], None, PROMPTS, COMPLETIONS, COLUMNS, num_workers=0)


def test_async_functions_are_awaited_concurrently_with_each_other_and_with_plain_calls():
    arrived, everyone = [], threading.Event()
    plain_may_finish = threading.Event()

    def make(name):
        async def reward(prompts, completions, index, **kwargs):
            arrived.append(name)
            if len(arrived) == 3:
                everyone.set()
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, everyone.wait, 10), 10)
            plain_may_finish.set()
            return [1.0] * len(completions)

        reward.__name__ = name
        return reward

    def plain(prompts, completions, **kwargs):  # runs in this thread while the coroutines are in flight
        assert plain_may_finish.wait(10), "the async rewards did not run while the plain one did"
        return [0.5] * len(completions)

    total, per_func = compute_rewards([make("a"), plain, make("b"), make("c")], None, PROMPTS, COMPLETIONS, COLUMNS)
    assert sorted(arrived) == ["a", "b", "c"]
    assert total.tolist() == [3.5] * 8 and list(per_func) == ["a", "plain", "b", "c"]


def test_an_async_callable_object_and_a_plain_function_returning_a_coroutine():
    class Scorer:
        __name__ = "scorer"

        async def __call__(self, prompts, completions, **kwargs):
            await asyncio.sleep(0)
            return [2.0] * len(completions)

    def wrapper(prompts, completions, **kwargs):
        async def inner():
            return [1.0] * len(completions)

        return inner()

    total, _ = compute_rewards([Scorer(), wrapper], None, PROMPTS, COMPLETIONS, COLUMNS)
    assert total.tolist() == [3.0] * 8


def test_an_async_function_that_raises_is_named_with_its_samples():
    async def broken(prompts, completions, **kwargs):
        raise KeyError("solution")

    with pytest.raises(RewardError, match=r"'broken' raised KeyError: 'solution' \(while scoring samples 0-7 of 8") as info:
        compute_rewards([index_reward, broken], None, PROMPTS, COMPLETIONS, COLUMNS)
    assert isinstance(info.value.__cause__, KeyError)


def test_a_raising_part_on_the_thread_pool_names_its_samples():
    def fails_on_the_second_part(prompts, completions, index, **kwargs):
        if 4 in index:
            raise ValueError("no verifier for this one")
        return index_reward(prompts, completions, index)

    with pytest.raises(RewardError, match=r"'fails_on_the_second_part' raised ValueError.*samples 4-5 of 8; first prompt: 'p4'"):
        compute_rewards([fails_on_the_second_part], None, PROMPTS, COMPLETIONS, COLUMNS, num_workers=4, group_size=2)


def test_an_async_call_over_the_timeout_is_cancelled_and_named():
    cancelled = threading.Event()

    async def slow(prompts, completions, **kwargs):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=r"'slow' did not return within reward_timeout=0.2 s \(while scoring samples 0-7 of 8"):
        compute_rewards([slow], None, PROMPTS, COMPLETIONS, COLUMNS, timeout=0.2)
    assert cancelled.wait(5)


def test_a_timeout_error_of_the_function_itself_is_its_error_not_reward_timeout():
    async def client_timed_out(prompts, completions, **kwargs):
        raise TimeoutError("upstream took too long")

    with pytest.raises(RewardError, match="'client_timed_out' raised TimeoutError: upstream took too long"):
        compute_rewards([client_timed_out], None, PROMPTS, COMPLETIONS, COLUMNS, timeout=30)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_plain_call_over_the_timeout_is_named_and_does_not_block(num_workers):
    release = threading.Event()

    def stuck(prompts, completions, index, **kwargs):
        if 0 in index:
            release.wait(60)
        return index_reward(prompts, completions, index)

    try:
        with pytest.raises(RewardError, match=r"'stuck' did not return within reward_timeout=0.2 s \(while scoring samples 0-"):
            compute_rewards([stuck], None, PROMPTS, COMPLETIONS, COLUMNS, num_workers=num_workers, timeout=0.2, group_size=2)
    finally:
        release.set()  # let the stuck thread finish


def test_calls_within_the_timeout_pass():
    async def quick(prompts, completions, **kwargs):
        await asyncio.sleep(0.01)
        return [1.0] * len(completions)

    total, _ = compute_rewards([quick, index_reward], None, PROMPTS, COMPLETIONS, COLUMNS, num_workers=2, timeout=30, group_size=2)
    assert total.tolist() == [1.0 + i for i in range(8)]


@pytest.mark.parametrize("bad", [dict(reward_num_workers=-1), dict(reward_timeout=0.0), dict(reward_timeout=float("inf"))])
def test_config_validation(bad, tmp_path):
    field = next(iter(bad))
    with pytest.raises(ConfigError, match=field):
        GRPOConfig(output_dir=str(tmp_path), **bad)


def test_a_grpo_step_with_async_and_threaded_rewards_and_a_timeout(tiny_model_dir, tmp_path):
    from llm_rl.data import arithmetic_dataset

    async def async_length(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(c) % 3) for c in completions]

    def plain_length(prompts, completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    config = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_batch_size=2, num_generations=2,
                        max_completion_length=4, reward_num_workers=2, reward_timeout=60.0)
    trainer = GRPOTrainer(tiny_model_dir, [async_length, plain_length], args=config, train_dataset=arithmetic_dataset(8))
    assert trainer.train()["steps"] == 2


def test_a_reward_that_times_out_stops_the_run_with_its_name(tiny_model_dir, tmp_path):
    from llm_rl.data import arithmetic_dataset

    release = threading.Event()

    def hangs(prompts, completions, **kwargs):
        release.wait(60)
        return [0.0] * len(completions)

    config = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_batch_size=2, num_generations=2,
                        max_completion_length=4, reward_timeout=0.5)
    trainer = GRPOTrainer(tiny_model_dir, [hangs], args=config, train_dataset=arithmetic_dataset(8))
    try:
        with pytest.raises(RewardError, match="'hangs' did not return within reward_timeout=0.5 s"):
            trainer.train()
    finally:
        release.set()
