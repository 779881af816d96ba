"""The benchmarks' own arithmetic: step-clock medians by hand, and prefill once per prompt."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import StepClock  # noqa: E402


def test_step_clock_medians_match_hand_computed_values():
    times = iter([0.0, 0.1, 0.3, 0.5,  # step 0 (warm-up): start, generation start/end, first training forward
                  1.0, 1.1, 1.6, 2.0,  # step 1
                  3.0, 3.0, 4.0, 4.0,  # step 2
                  6.0])  # step 3 starts: the end of step 2  # fmt: skip
    clock = StepClock()
    clock.now = lambda: next(times)
    generate = clock.timed_generation(lambda: None)
    for generated in (50, 100, 300):
        clock.step_start()
        generate()
        clock.count_tokens(generated, 2 * generated)
        clock.update_start()
    clock.step_start()
    summary = clock.summary(warmup=1, steps=5)  # steps 1 and 2: the last start only closes step 2
    assert summary["steps_measured"] == 2
    assert summary["step_seconds"] == pytest.approx((2.0 + 3.0) / 2)  # 3 - 1 and 6 - 3
    assert summary["generation_seconds"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["update_seconds"] == pytest.approx((1.0 + 2.0) / 2)  # 3 - 2 and 6 - 4
    assert summary["other_seconds"] == pytest.approx((0.5 + 0.0) / 2)  # step - generation - update
    assert summary["generated_tokens_per_second"] == pytest.approx((100 / 0.5 + 300 / 1.0) / 2)
    assert summary["update_tokens_per_second"] == pytest.approx((200 / 1.0 + 600 / 2.0) / 2)


def test_step_clock_needs_a_measured_step():
    clock = StepClock()
    clock.step_start()
    with pytest.raises(RuntimeError, match="no measured step"):
        clock.summary(warmup=1, steps=1)


@pytest.mark.slow
def test_throughput_prefills_each_prompt_once_whatever_the_group_size(tiny_model_dir):
    import time

    from throughput import PHASES, run_config

    rows = [run_config(G, 3, prompts=2, steps=1, warmup=0, model=tiny_model_dir, now=time.perf_counter) for G in (2, 4)]
    for row in rows:
        assert all(row[phase] > 0 for phase in PHASES)
        assert row["step"] >= sum(row[phase] for phase in PHASES)
    # the same two prompts at G = 2 and G = 4: prefill positions per prompt do not grow with G
    assert rows[0]["prefill_tokens_per_prompt"] == rows[1]["prefill_tokens_per_prompt"] > 0
