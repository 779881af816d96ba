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


# ---------------------------------------------------------------------------- real_shape.py and gpu_check.sh
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RUN_FIGURES = ("peak_memory_mb", "predicted_memory_mb", "state_memory_mb", "step_seconds", "generated_tokens_per_second")


def test_real_shape_prompts_tokenize_to_exactly_the_asked_length(tiny_tokenizer):
    from real_shape import fixed_length_prompts

    for length in (24, 64):
        prompts = fixed_length_prompts(tiny_tokenizer, 12, length)
        lengths = {len(tiny_tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts["prompt"]}
        assert lengths == {length}
        assert all(p.endswith(" Answer:") for p in prompts["prompt"])  # the problem is kept whole, at the end
        assert len(set(prompts["prompt"])) == 12


def test_real_shape_state_memory_is_what_predict_memory_counts(monkeypatch):
    """fp32 weights, reference copy, gradients, two AdamW moments: 5 x 4 bytes a parameter (full GRPO);
    LoRA: the weights, then 4 x 4 bytes an adapter parameter (itself, its gradient, two moments)."""
    import real_shape

    from llm_rl.memory import PRESETS, ModelShape

    shape = ModelShape(**{**PRESETS["qwen2.5-0.5b"].__dict__, "dtype": "float32"})
    monkeypatch.setattr(ModelShape, "from_config", classmethod(lambda cls, config: shape))  # no folder needed
    s = {"model": "unused", "prompt_length": 64, "max_completion_length": 128, "prompts_per_step": 2,
         "num_generations": 8, "ppo_prompts_per_step": 16, "num_mini_batches": 1, "rollout_dtype": None,
         "precision": real_shape.PRECISIONS["fp32"]}  # fmt: skip
    grpo, lora, trl = (real_shape.predicted(n, s, "cpu") for n in ("llm_rl_grpo", "llm_rl_grpo_lora", "trl_grpo"))
    assert grpo["state_memory_mb"] == pytest.approx(5 * 4 * shape.num_params / 2**20)
    assert trl["state_memory_mb"] == grpo["state_memory_mb"] and trl["predicted_memory_mb"] is None
    assert lora["state_memory_mb"] == pytest.approx((4 * shape.num_params + 4 * 4 * shape.lora_params(16)) / 2**20)
    assert grpo["predicted_memory_mb"] > grpo["state_memory_mb"]
    bf16_copy = real_shape.predicted("llm_rl_grpo", {**s, "rollout_dtype": "bfloat16"}, "cpu")
    assert bf16_copy["state_memory_mb"] - grpo["state_memory_mb"] == pytest.approx(2 * shape.num_params / 2**20)
    # a run's own settings (RUNS) win over the command line's: the same figures as the command-line setting
    assert real_shape.predicted("llm_rl_grpo_rollout_bf16", s, "cpu") == bf16_copy
    assert real_shape.run_settings("llm_rl_grpo_bf16", s)["precision"] == real_shape.PRECISIONS["bf16"]
    assert real_shape.predicted("llm_rl_grpo_bf16", s, "cpu") == real_shape.predicted(
        "llm_rl_grpo", {**s, "precision": real_shape.PRECISIONS["bf16"]}, "cpu")


def test_real_shape_records_a_failed_run_and_goes_on(monkeypatch, capsys):
    """One run's failure (not an allocation) is recorded with its output; the report still prints every run."""
    import subprocess

    import real_shape

    monkeypatch.setattr(real_shape.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "boom: a bug"))
    failed = real_shape.run_worker("llm_rl_grpo", {"torch_threads": 1})
    assert failed["status"] == "failed" and "boom: a bug" in failed["error"]
    assert "llm_rl_grpo failed (exit 1)" in capsys.readouterr().err
    s = {"size": "smoke", "prompts_per_step": 2, "num_generations": 8, "ppo_prompts_per_step": 16, "prompt_length": 64,
         "max_completion_length": 8, "precision": "fp32", "rollout_dtype": None, "steps": 1, "warmup": 0,
         "clock": "wall", "torch_threads": 1}  # fmt: skip
    real_shape.print_report(s, {"llm_rl_grpo": {**failed, "predicted_memory_mb": 1.0, "state_memory_mb": 1.0, "settings": {}}})
    assert "failed" in capsys.readouterr().out.split("peak memory above baseline MB")[1].splitlines()[0]


@pytest.mark.slow
def test_real_shape_reports_a_run_out_of_memory_instead_of_failing(tmp_path):
    import json
    import subprocess

    out = tmp_path / "real_shape.json"
    cmd = [sys.executable, str(BENCHMARKS / "real_shape.py"), "--size", "smoke", "--only", "llm_rl_grpo",
           "--steps", "1", "--warmup", "0", "--memory_limit_gb", "0.5", "--json", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    run = json.loads(out.read_text())["runs"]["llm_rl_grpo"]
    assert run["status"] == "out of memory" and run["predicted_memory_mb"] > 0
    assert "out of memory" in result.stdout


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu_writes_its_figures(tmp_path):
    import json
    import os
    import subprocess

    out, work = tmp_path / "gpu_check.json", tmp_path / "work"
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry-run", "--out", str(out), "--work", str(work)],
                            capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    # its shape step is `real_shape.py --size smoke --warmup 0 --steps 1 --only ...`: the documented JSON, three runs
    shape = json.loads((work / "real_shape.json").read_text())
    assert shape["settings"]["size"] == "smoke" and shape["settings"]["prompt_length"] == 64
    assert list(shape["runs"]) == ["llm_rl_grpo_bf16", "llm_rl_grpo", "llm_rl_grpo_rollout_bf16"]
    run = shape["runs"]["llm_rl_grpo"]
    assert run["status"] == "ok"
    for key in RUN_FIGURES:
        assert run[key] > 0, key
    assert run["tokens_per_row"] == 64 + shape["settings"]["max_completion_length"]  # exact prompts, forced length
    assert run["generation_share"] + run["logprob_share"] + run["update_share"] == pytest.approx(1.0)
    assert "llm_rl_grpo" in result.stdout and "peak memory above baseline MB" in result.stdout  # real_shape's table

    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["failed_steps"] == []
    assert report["cuda_tests"]["tests"] >= 1  # collected; skipped here, without CUDA
    step = report["bf16_grpo_step"]
    assert step["status"] == "ok" and step["precision"].startswith("float32 weights, bf16 autocast")
    assert step["peak_memory_mb"] > 0 and step["predicted_memory_mb"] > 0
    rollout = report["rollout_dtype"]
    assert rollout["float32"]["rollout_dtype"] == "float32" and rollout["bfloat16"]["rollout_dtype"] == "bfloat16"
    assert rollout["bfloat16_over_float32_generated_tokens_per_second"] > 0
