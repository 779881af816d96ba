"""User errors at the recipes' command line: one paragraph on stderr and exit status 2; bugs keep their traceback.

Every case of issue 17 (item 0) runs through a recipe's own ``if __name__ == "__main__"``
with its command line. Starting Python costs seconds of imports, so the cases share one
interpreter (``_DRIVER`` runs each recipe as ``__main__`` with ``runpy``, as ``python
recipes/X.py`` does); the checks that need a real process exit (the traceback of
``--debug`` and of a bug, the status of ``python recipes/X.py`` itself) start their own,
all at once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_rl.cli import run
from llm_rl.data import PromptDataError
from llm_rl.errors import (
    USER_ERRORS,
    CheckpointNotFoundError,
    ModelLoadError,
    ModelNotFoundError,
    OutputDirError,
    UserError,
)
from llm_rl.trainers.config import ConfigError
from reward_models.combine import RewardError, RewardModelNotFoundError

pytestmark = pytest.mark.xdist_group("test_cli_errors")  # one worker: its module-scoped fixtures are built once

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

# Runs recipes/<recipe>.py as __main__ once per case, in this one interpreter; prints what each left.
_DRIVER = r"""
import contextlib, io, json, runpy, sys
results = []
for case in json.loads(sys.argv[1]):
    sys.argv = [case["script"], *case["argv"]]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(case["script"], run_name="__main__")
            code = 0
        except SystemExit as exit:
            code = exit.code
        except BaseException as error:  # run() let it out: the interpreter would print its traceback
            code = f"raised {type(error).__name__}"
    results.append({"id": case["id"], "code": code, "stderr": err.getvalue()})
print("RESULTS " + json.dumps(results))
"""


@dataclass(frozen=True)
class Case:
    id: str
    recipe: str
    argv: tuple[str, ...]
    message: str  # regex the error line must match after "<recipe>.py: error: "


def _cases(data: Path, model: str) -> list[Case]:
    """The issue's list (and a few more), each a command line; ``data`` holds the files they point at."""
    finished_run, pairs_run = data / "finished_run", data / "pairs_run"
    return [
        # grpo_math: the issue's list
        Case("missing_dataset_file", "grpo_math", ("--dataset", "missing.jsonl"), r"The prompt file 'missing\.jsonl' does not exist"),
        Case("empty_file", "grpo_math", ("--dataset", str(data / "empty.jsonl")), r"The prompt file .*empty\.jsonl is empty"),
        Case("no_prompt_column", "grpo_math", ("--dataset", str(data / "questions.jsonl")),
             r"has no column 'prompt'; its columns are \['question', 'answer'\].*--prompt_column"),
        Case("broken_json", "grpo_math", ("--dataset", str(data / "broken.jsonl")), r"Could not read .*broken\.jsonl as json"),
        Case("model_folder_missing", "grpo_math", ("--model", "./no/such/model", "--dataset", str(data / "prompts.jsonl")),
             r"Model path './no/such/model' does not exist\. Pass a folder saved with save_pretrained"),
        Case("model_hub_name_offline", "grpo_math", ("--model", "no-such-org/no-such-model", "--dataset", str(data / "prompts.jsonl")),
             r"Could not load a tokenizer from 'no-such-org/no-such-model'\. The hub is unreachable"),
        Case("dataset_hub_name_offline", "grpo_math", ("--dataset", "no-such-org/no-such-data"), r"offline"),
        Case("output_dir_holds_a_finished_run", "grpo_math",
             ("--model", model, "--dataset", str(data / "prompts.jsonl"), "--output_dir", str(finished_run)),
             r"output_dir '.*finished_run' already holds a run .*--overwrite_output_dir"),
        # settings, on the command line and in a run config
        Case("bad_value_on_the_command_line", "grpo_math", ("--learning_rate", "-1"),
             r"Invalid config: learning_rate must be a finite number > 0, got -1\.0$"),
        Case("eval_size_below_one", "ppo_math", ("--eval_size", "-3"), r"eval_size must be a whole number >= 1 \(held-out problems\), got -3$"),
        Case("unknown_reward_name", "grpo_math", ("--rewards", "math_correctness,no_such_reward"),
             r"rewards names unknown reward\(s\) \['no_such_reward'\]; choose from math_correctness"),
        Case("bad_key_in_run_config", "grpo_math", ("--config", str(data / "bad_key.yaml")),
             r"--config .*bad_key\.yaml: unknown key 'learning_rat': did you mean 'learning_rate'\?"),
        # ppo_math: a reward model folder that does not exist, nothing to resume
        Case("reward_model_folder_missing", "ppo_math", ("--model", model, "--dataset", str(data / "prompts.jsonl"),
             "--reward", "./no/such/reward_model", "--output_dir", str(data / "ppo_reward")),
             r"No reward model folder at './no/such/reward_model'"),
        Case("nothing_to_resume", "ppo_math", ("--model", model, "--dataset", str(data / "prompts.jsonl"),
             "--resume_from_checkpoint", "latest", "--output_dir", str(data / "ppo_resume")),
             r"No complete checkpoint found for resume_from_checkpoint='latest'"),
        # train_reward_model
        Case("pairs_file_missing", "train_reward_model", ("--dataset", "missing_pairs.jsonl"), r"The prompt file 'missing_pairs\.jsonl' does not exist"),
        Case("pairs_without_rejected", "train_reward_model", ("--dataset", str(data / "questions.jsonl")),
             r"lacks the column\(s\) \['prompt', 'chosen', 'rejected'\]"),
        Case("reward_config_out_of_range", "train_reward_model", ("--learning_rate", "-1"), r"RewardModelConfig: learning_rate must be > 0"),
        Case("reward_output_dir_holds_a_run", "train_reward_model", ("--output_dir", str(pairs_run)), r"already holds a run"),
        # compare_memory
        Case("memory_model_folder_missing", "compare_memory", ("--model", "./no/such/model"), r"Model path './no/such/model' does not exist"),
        Case("memory_preset_without_predict_only", "compare_memory", ("--model", "qwen2.5-7b"), r"preset shape, not weights: add --predict_only"),
    ]  # fmt: skip


def _write_data(data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"What is {i} + 1? Answer:", "answer": str(i + 1)} for i in range(8)]
    (data / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "empty.jsonl").write_text("")
    (data / "questions.jsonl").write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    (data / "broken.jsonl").write_text('{"prompt": "What is 1 + 1?", "answer": \n')
    (data / "bad_key.yaml").write_text("learning_rat: 1.0e-5\n")
    for run_dir in ("finished_run", "pairs_run"):
        (data / run_dir).mkdir()
        (data / run_dir / "metrics.jsonl").write_text('{"step": 1}\n')


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LLM_RL_DEBUG"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def _start(args: list[str], cwd: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=_env(**env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _error_line(stderr: str, recipe: str) -> str:
    """The one ``error:`` line, which must be stderr's last, with nothing of a traceback before it."""
    assert "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"{recipe}.py: error: "), stderr
    return line.removeprefix(f"{recipe}.py: error: ")


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_model_dir):
    """Every process of this module, started together: the driver with all cases, and the real-exit checks."""
    data = tmp_path_factory.mktemp("cli")
    _write_data(data)
    cases = _cases(data, tiny_model_dir)
    spec = [{"id": c.id, "script": str(RECIPES / f"{c.recipe}.py"), "argv": list(c.argv)} for c in cases]
    bug = ("import runpy, sys; import llm_rl.recipe_utils as u; "
           "u.train_and_eval_data = lambda *a: {}['a bug: a key that is not there']; "
           f"sys.argv = [{str(RECIPES / 'grpo_math.py')!r}]; runpy.run_path(sys.argv[0], run_name='__main__')")  # fmt: skip
    processes = {
        "driver": _start(["-c", _DRIVER, json.dumps(spec)], data),
        "real_command_line": _start([str(RECIPES / "ppo_math.py"), "--dataset", "missing.jsonl"], data),
        "debug_flag": _start([str(RECIPES / "grpo_math.py"), "--dataset", "missing.jsonl", "--debug"], data),
        "debug_env": _start([str(RECIPES / "train_reward_model.py"), "--dataset", "missing.jsonl"], data, LLM_RL_DEBUG="1"),
        "bug": _start(["-c", bug], data),
        "vs_trl_without_trl_dir": _start([str(ROOT / "benchmarks" / "vs_trl.py"), "--steps", "1"], data, LLM_RL_TRL_PPO_DIR=""),
    }
    finished = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        finished[name] = (process.returncode, stdout, stderr)
    results = json.loads(finished["driver"][1].split("RESULTS ", 1)[1])
    assert finished["driver"][0] == 0, finished["driver"][2]
    return {"cases": cases, "results": {r["id"]: r for r in results}, **finished}


def test_this_module_runs_on_one_xdist_worker(request):
    """Under pyproject.toml's `-n auto --dist loadgroup`, this module's tests go to one worker, so `launched` is built
    once. pytest-xdist marks a group by a node-id suffix, which pytest 9.2 drops (pytest-dev/pytest-xdist#1386: the
    tests then spread over the workers and each builds `launched`); hence pytest<9.2 in the dev extra."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not a pytest-xdist worker under --dist loadgroup")
    assert request.node.nodeid.endswith("@test_cli_errors"), (
        f"pytest-xdist's loadgroup did not mark {request.node.nodeid!r} (pytest {pytest.__version__}): its xdist_group is "
        "ignored; keep pytest below 9.2 until pytest-xdist supports it"
    )


@pytest.mark.slow
def test_every_user_error_ends_in_one_paragraph_and_status_2(launched):
    failures = []
    for case in launched["cases"]:
        result = launched["results"][case.id]
        try:
            assert result["code"] == 2, f"exit status {result['code']}"
            message = _error_line(result["stderr"], case.recipe)
            assert re.search(case.message, message), message
        except AssertionError as error:
            failures.append(f"{case.id}: {error}\n{result['stderr'][-2000:]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_the_cases_cover_the_issue(launched):
    issue = {"missing dataset file": "missing_dataset_file", "empty file": "empty_file", "no prompt column": "no_prompt_column",
             "broken JSON": "broken_json", "a model folder that does not exist": "model_folder_missing",
             "a hub name while offline": "model_hub_name_offline", "an output_dir holding a finished run": "output_dir_holds_a_finished_run"}  # fmt: skip
    assert set(issue.values()) <= set(launched["results"])
    recipes = {case.recipe for case in launched["cases"]}
    assert recipes == {"grpo_math", "ppo_math", "train_reward_model", "compare_memory"}


@pytest.mark.slow
def test_python_recipe_exits_2_with_one_line(launched):
    code, _, stderr = launched["real_command_line"]
    assert code == 2
    assert re.search(r"The prompt file 'missing\.jsonl' does not exist", _error_line(stderr, "ppo_math"))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["debug_flag", "debug_env"])
def test_debug_shows_the_traceback(launched, how):
    code, _, stderr = launched[how]
    assert code == 1
    assert "Traceback (most recent call last)" in stderr
    assert "llm_rl.data.prompts.PromptDataError: The prompt file 'missing.jsonl' does not exist" in stderr


@pytest.mark.slow
def test_a_bug_keeps_its_traceback(launched):
    code, _, stderr = launched["bug"]
    assert code == 1
    assert "Traceback (most recent call last)" in stderr and "KeyError: 'a bug: a key that is not there'" in stderr
    assert ": error: " not in stderr


# ----------------------------------------------------------------------------- the mechanism, in-process


def _fails_with(error):
    def main(argv):
        raise error

    return main


def test_run_prints_the_message_and_exits_2(capsys):
    with pytest.raises(SystemExit) as caught:
        run(_fails_with(PromptDataError("The prompt file 'x.jsonl' does not exist. Check the path.")), [])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(": error: The prompt file 'x.jsonl' does not exist. Check the path.\n") and err.count("\n") == 1


def test_run_names_the_rank_under_a_multi_process_launch(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        run(_fails_with(ConfigError("Invalid config: x")), [])
    assert capsys.readouterr().err.startswith("[rank 1] ")


@pytest.mark.parametrize("error", [PromptDataError("p"), ConfigError("c"), RewardError("r"), ModelNotFoundError("m"),
                                   ModelLoadError("l"), OutputDirError("o"), CheckpointNotFoundError("k"),
                                   RewardModelNotFoundError("f"), UserError("u")])  # fmt: skip
def test_every_user_error_kind_is_caught_and_debug_lets_it_out(error, monkeypatch):
    with pytest.raises(SystemExit):
        run(_fails_with(error), [])
    with pytest.raises(type(error)):
        run(_fails_with(error), ["--debug"])
    monkeypatch.setenv("LLM_RL_DEBUG", "1")
    with pytest.raises(type(error)):
        run(_fails_with(error), [])


@pytest.mark.parametrize("error", [KeyError("k"), ValueError("v"), FileNotFoundError("f"), OSError("o"), TypeError("t")])
def test_other_exceptions_are_bugs_and_pass_through(error):
    with pytest.raises(type(error)):
        run(_fails_with(error), [])


def test_user_errors_keep_the_builtin_types_they_had():
    """Code that caught the old types (except FileNotFoundError, ...) still catches the new ones."""
    assert issubclass(ModelNotFoundError, FileNotFoundError) and issubclass(CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(ModelLoadError, OSError) and issubclass(OutputDirError, FileExistsError)
    assert issubclass(RewardModelNotFoundError, FileNotFoundError) and issubclass(RewardModelNotFoundError, RewardError)
    for kind in (PromptDataError, ConfigError, RewardError):
        assert issubclass(kind, ValueError) and issubclass(kind, USER_ERRORS)


# ----------------------------------------------------------------------------- issue 17, item 6


@pytest.mark.slow
def test_vs_trl_needs_the_trl_ppo_folder_named(launched):
    code, _, stderr = launched["vs_trl_without_trl_dir"]
    assert code == 2 and "Traceback" not in stderr
    assert re.search(r"vs_trl\.py: error: the PPO half needs TRL 1\.12\.0 .*export LLM_RL_TRL_PPO_DIR=DIR or pass "
                     r"--trl_ppo_dir DIR \(or run --only grpo\)", stderr.strip().splitlines()[-1])


def test_no_machine_paths_in_the_product():
    shipped = [ROOT / "pyproject.toml", ROOT / "README.md",
               *(p for folder in ("llm_rl", "reward_models", "recipes", "benchmarks") for p in (ROOT / folder).rglob("*")
                 if p.suffix in (".py", ".yaml", ".toml", ".md"))]  # fmt: skip
    found = [f"{p.relative_to(ROOT)}:{n}" for p in shipped for n, line in enumerate(p.read_text().splitlines(), 1) if "/work/" in line]
    assert not found, f"machine-specific paths: {found}"
