"""The embedded task's honest held-out split: a fixed 15% of the problem space that training never draws."""

import hashlib
import json
import random
import sys
from collections import Counter
from pathlib import Path


from llm_rl.data import load_task
from llm_rl.data.arithmetic import (
    HELDOUT_SEED, ArithmeticSpec, arithmetic_dataset, heldout_arithmetic, make_problem, problem_space,
    unseen_arithmetic, unseen_problems,
)
from llm_rl.models import tiny

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_the_problem_space_is_what_the_generator_draws():
    space = problem_space()
    assert {op: len(p) for op, p in space.items()} == {"+": 441, "-": 231, "*": 100}
    rng = random.Random(0)
    drawn = {make_problem(rng)["prompt"] for _ in range(100_000)}
    assert drawn == {p for prompts in space.values() for p in prompts}  # 772, no more, no less
    negative = problem_space(ArithmeticSpec(allow_negative=True, max_operand=3, max_mul_operand=2))
    assert {op: len(p) for op, p in negative.items()} == {"+": 16, "-": 16, "*": 9}


def test_the_unseen_split_is_a_fixed_stratified_15_percent():
    unseen = unseen_problems()
    counts = Counter(p.split()[3] for p in unseen)
    assert counts == {"+": 66, "-": 35, "*": 15} and len(unseen) == 116  # round(0.15 * n) of each operator
    # Fixed: the tiny model's warm start left exactly these out (bump TINY_VERSION if this changes)
    digest = hashlib.sha256("\n".join(sorted(unseen)).encode()).hexdigest()[:16]
    assert digest == "13cdb79e7a3bdf62", digest
    assert tiny.TINY_VERSION == "tiny-arith-v4"


def test_training_prompts_never_hold_an_unseen_problem():
    unseen = unseen_problems()
    train = arithmetic_dataset(20_000, seed=3)
    assert not set(train["prompt"]) & unseen
    assert len(set(train["prompt"])) == 772 - 116  # every other problem still appears
    assert not set(load_task("arithmetic", num_arithmetic=5_000, seed=1)["prompt"]) & unseen  # the recipes' RL prompts
    assert set(arithmetic_dataset(20_000, seed=3, include_unseen=True)["prompt"]) & unseen
    # answers still match their prompts after the redraws
    for row in arithmetic_dataset(200, seed=4):
        a, op, b = row["prompt"].split()[2:5]
        b = b.rstrip("?")
        assert int(row["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def test_the_evaluation_sets():
    unseen = unseen_problems()
    held, fresh = heldout_arithmetic(), unseen_arithmetic()
    assert len(held) == len(fresh) == 200
    # `accuracy` keeps its 200 problems: draws from the whole task with its own seed, unchanged
    rng = random.Random(HELDOUT_SEED)
    assert held["prompt"] == [make_problem(rng)["prompt"] for _ in range(200)]
    assert 0 < sum(p in unseen for p in held["prompt"]) < 60  # ~15% of its draws fall in the unseen split
    # `accuracy_unseen`: drawn the same way, restricted to the unseen split, so each operator keeps ~1/3
    assert set(fresh["prompt"]) <= unseen and fresh["prompt"] == unseen_arithmetic()["prompt"]
    shares = Counter(p.split()[3] for p in fresh["prompt"])
    assert all(40 <= shares[op] <= 95 for op in "+-*"), shares


def test_the_warm_start_never_sees_an_unseen_problem(monkeypatch, tiny_tokenizer):
    seen_prompts = []
    real_batch = tiny._sft_batch
    monkeypatch.setattr(tiny, "_sft_batch", lambda tok, problems: seen_prompts.extend(p["prompt"] for p in problems)
                        or real_batch(tok, problems))
    monkeypatch.setattr(tiny, "greedy_accuracy", lambda model, tok, data, **k: seen_prompts.extend(data["prompt"]) or 0.0)
    model = tiny.build_untrained(tiny_tokenizer, hidden_size=32, num_layers=1)
    tiny.warm_start(model, tiny_tokenizer, max_steps=4, batch_size=16, eval_every=2, log=lambda *_: None)
    assert len(seen_prompts) == 4 * 16 + 2 * 400  # training batches and both validation passes
    assert not set(seen_prompts) & unseen_problems()


def test_recipe_utils_evaluates_both_sets_the_same_way(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_rl.recipe_utils import ScriptArguments, accuracy_eval_fn, train_and_eval_data

    train, sets = train_and_eval_data(ScriptArguments(eval_size=20), seed=0)  # 20: three of its draws are unseen
    assert set(sets) == {"accuracy", "accuracy_unseen"} and all(len(d) == 20 for d in sets.values())
    assert sets["accuracy_unseen"]["prompt"] == unseen_arithmetic(20)["prompt"]
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    result = accuracy_eval_fn(sets, max_new_tokens=4)(model, tok)
    assert set(result) == {"accuracy", "accuracy_seen", "accuracy_unseen"} and all(0.0 <= v <= 1.0 for v in result.values())
    assert set(accuracy_eval_fn(heldout_arithmetic(20), max_new_tokens=4)(model, tok)) == {"accuracy"}  # one set: as before
    # accuracy_seen: the same pass, restricted to the rows whose problem training also draws (rows 8, 10, 18 are unseen)
    unseen_rows = sets["accuracy"]["unseen"]
    assert unseen_rows == [p in unseen_problems() for p in sets["accuracy"]["prompt"]] and sum(unseen_rows) == 3
    import llm_rl.recipe_utils as recipe_utils

    right = [i % 3 != 1 for i in range(20)]  # a known pattern: 13 of 20 right, 11 of the 17 seen rows, 2 of the 3 unseen
    monkeypatch.setattr(recipe_utils, "greedy_correct", lambda model, tok, data, **kwargs: right[: len(data)])
    result = accuracy_eval_fn(sets, max_new_tokens=4)(model, tok)
    assert result["accuracy"] == 13 / 20 and result["accuracy_seen"] == 11 / 17 and result["accuracy_unseen"] == 13 / 20
    assert accuracy_eval_fn(None, 4) is None


def test_the_grpo_recipe_reports_accuracy_unseen_before_and_after(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    sys.path.insert(0, str(RECIPES))
    try:
        import grpo_math

        grpo_math.main(["--model", tiny_model_dir, "--output_dir", str(out), "--max_steps", "1", "--eval_steps", "1",
                        "--eval_size", "4", "--per_device_batch_size", "2", "--num_generations", "2"])
    finally:
        sys.path.remove(str(RECIPES))
    evaluation = json.loads((out / "eval.json").read_text())
    assert {"accuracy_before", "accuracy_after", "accuracy_unseen_before", "accuracy_unseen_after"} <= set(evaluation)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "accuracy_unseen" in rows[0] and "accuracy_unseen" in rows[-1]  # step 0 (before) and step 1
