"""Run configs as files: ``--config run.yaml`` (or .json) for every recipe; command-line flags win.

The shipped ``recipes/configs/<recipe>.yaml`` are the recipes' defaults written out; they
must match the code (regenerate them with ``python recipes/configs/generate.py``).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from llm_rl import GRPOConfig, PPOConfig
from llm_rl.cli import default_values, parse_args
from llm_rl.recipe_utils import parse

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
GRPO_DEFAULTS = {"output_dir": "outputs/grpo_math", "eval_steps": 100}


def _generate():
    spec = importlib.util.spec_from_file_location("generate_configs", CONFIGS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = _generate()
RECIPES = GENERATE.RECIPES  # every recipe with a shipped defaults file


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _error(capsys, argv, config_class=GRPOConfig) -> str:
    """The one line a bad run config ends with (exit status 2, as a bad flag)."""
    with pytest.raises(SystemExit) as caught:
        parse(config_class, GRPO_DEFAULTS, argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


# ----------------------------------------------------------------------------- the shipped configs


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_defaults_match_the_code(recipe):
    module = GENERATE.recipe_module(recipe)
    in_file = yaml.safe_load((CONFIGS / f"{recipe}.yaml").read_text())
    in_code = default_values(module.ARGUMENTS, module.TINY_DEFAULTS)
    stale = sorted(k for k in in_file.keys() | in_code.keys() if in_file.get(k, "<missing>") != in_code.get(k, "<missing>"))
    assert not stale, f"recipes/configs/{recipe}.yaml is stale for {stale}: run python recipes/configs/generate.py"


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_shipped_config_gives_what_no_flags_give(recipe):
    module = GENERATE.recipe_module(recipe)
    from_file = parse_args(module.ARGUMENTS, module.TINY_DEFAULTS, ["--config", str(CONFIGS / f"{recipe}.yaml")])
    assert from_file == parse_args(module.ARGUMENTS, module.TINY_DEFAULTS, [])


def test_the_gsm8k_config_is_the_readme_run():
    script_args, config = parse(GRPOConfig, GRPO_DEFAULTS, ["--config", str(CONFIGS / "grpo_gsm8k_qwen2.5-0.5b.yaml")])
    assert (script_args.model, script_args.dataset, script_args.rewards) == ("Qwen/Qwen2.5-0.5B-Instruct", "gsm8k", "math_correctness")
    assert config.learning_rate == 1e-6 and config.max_completion_length == 256 and config.bf16 is True
    assert not config.use_peft and config.model_dtype == "float32"  # full fine-tuning on float32 master weights
    assert config.output_dir == "outputs/grpo_gsm8k_qwen2.5-0.5b"


def test_help_lists_config_and_debug(capsys):
    with pytest.raises(SystemExit):
        parse(GRPOConfig, argv=["--help"])
    out = capsys.readouterr().out
    assert "--config FILE" in out and "--debug" in out and "LLM_RL_DEBUG=1" in out


# ----------------------------------------------------------------------------- precedence and validation


def test_the_file_sets_values_and_flags_win(tmp_path):
    path = _write(tmp_path, "run.yaml", "max_steps: 3\nlearning_rate: 2.0e-5\nmodel: some/model\nreward_weights: [0.5]\n")
    script_args, config = parse(GRPOConfig, GRPO_DEFAULTS, ["--config", path, "--max_steps", "7"])
    assert config.max_steps == 7  # the flag
    assert config.learning_rate == 2e-5 and script_args.model == "some/model" and config.reward_weights == [0.5]  # the file
    assert config.eval_steps == 100 and config.output_dir == "outputs/grpo_math"  # the recipe's defaults
    _, flag_first = parse(GRPOConfig, GRPO_DEFAULTS, ["--max_steps", "7", "--config", path])
    assert flag_first.max_steps == 7  # wherever --config stands


def test_the_file_overrides_the_recipe_defaults(tmp_path):
    path = _write(tmp_path, "run.yaml", "output_dir: elsewhere\n")
    assert parse(GRPOConfig, GRPO_DEFAULTS, ["--config", path])[1].output_dir == "elsewhere"


def test_json_works_as_yaml(tmp_path):
    path = _write(tmp_path, "run.json", json.dumps({"max_steps": 4, "cliprange": None, "kl_controller": "adaptive"}))
    _, config = parse(PPOConfig, argv=[f"--config={path}"])
    assert (config.max_steps, config.cliprange, config.kl_controller) == (4, None, "adaptive")


def test_validation_runs_on_the_merged_values(tmp_path):
    # the file alone is invalid (min 10 > the default max 8), the file and the flag together are not
    path = _write(tmp_path, "run.yaml", "min_completion_length: 10\n")
    assert parse(GRPOConfig, argv=["--config", path, "--max_completion_length", "20"])[1].min_completion_length == 10
    # a bad value in the file that a flag overrides is never validated
    bad = _write(tmp_path, "bad.yaml", "learning_rate: -1\n")
    assert parse(GRPOConfig, argv=["--config", bad, "--learning_rate", "3e-4"])[1].learning_rate == 3e-4


def test_none_is_a_value_for_optional_fields(tmp_path):
    """``--cliprange None`` (PPO-penalty, as the README says) and ``cliprange: null`` in a file."""
    assert parse(PPOConfig, argv=["--cliprange", "None", "--bf16", "None"])[1].cliprange is None
    path = _write(tmp_path, "run.yaml", "cliprange: null\nmissing_eos_penalty: null\n")
    assert parse(PPOConfig, argv=["--config", path])[1].cliprange is None
    path = _write(tmp_path, "grpo.yaml", "rollout_correction: null\nepsilon_low: null\n")
    assert parse(GRPOConfig, argv=["--config", path])[1].rollout_correction is None
    assert parse(GRPOConfig, argv=["--rollout_correction", "None"])[1].rollout_correction is None


def test_report_to_takes_a_list_in_every_form(tmp_path):
    assert parse(GRPOConfig, argv=["--report_to", "tensorboard", "mlflow"])[1].report_to == ["tensorboard", "mlflow"]
    assert parse(GRPOConfig, argv=["--report_to", "tensorboard,mlflow"])[1].report_to == ["tensorboard", "mlflow"]
    path = _write(tmp_path, "run.yaml", "report_to: [tensorboard, mlflow]\n")
    assert parse(GRPOConfig, argv=["--config", path])[1].report_to == ["tensorboard", "mlflow"]
    assert parse(GRPOConfig, argv=["--config", path, "--report_to", "none"])[1].report_to == []


def test_the_other_recipes_take_config_files(tmp_path):
    reward = GENERATE.recipe_module("train_reward_model")
    path = _write(tmp_path, "rm.yaml", "num_pairs: 64\nlearning_rate: 1.0e-4\n")
    (config,) = parse_args(reward.ARGUMENTS, reward.TINY_DEFAULTS, ["--config", path, "--num_pairs", "32"])
    assert (config.num_pairs, config.learning_rate) == (32, 1e-4)
    memory = GENERATE.recipe_module("compare_memory")
    path = _write(tmp_path, "mem.yaml", "predict_only: true\nmodel: qwen2.5-7b\nhidden_size: null\n")
    (args,) = parse_args(memory.ARGUMENTS, memory.TINY_DEFAULTS, ["--config", path])
    assert args.predict_only is True and args.model == "qwen2.5-7b" and args.hidden_size is None


# ----------------------------------------------------------------------------- mistakes in the file

BAD_FILES = [
    ("unknown_key", "run.yaml", "learning_rat: 1.0e-5\n", r"run\.yaml: unknown key 'learning_rat': did you mean 'learning_rate'\?"),
    ("int_given_a_float", "run.yaml", "max_steps: 2.5\n", r"run\.yaml: max_steps: invalid int value: 2\.5$"),
    ("number_given_a_bool", "run.yaml", "learning_rate: true\n", r"run\.yaml: learning_rate: invalid float value: True$"),
    ("choice_not_allowed", "run.yaml", "lr_scheduler_type: cosin\n", r"run\.yaml: lr_scheduler_type: invalid choice: 'cosin' \(choose from 'constant', 'linear', 'cosine'\)"),
    ("list_for_one_value", "run.yaml", "max_steps: [1, 2]\n", r"run\.yaml: max_steps: expects one value"),
    ("null_not_allowed", "run.yaml", "learning_rate: null\n", r"run\.yaml: learning_rate: null is not allowed"),
    ("bool_not_a_bool", "run.yaml", "use_peft: maybe\n", r"run\.yaml: use_peft: invalid string_to_bool value: 'maybe'"),
    ("out_of_range", "run.yaml", "learning_rate: -1\n", r"learning_rate must be a finite number > 0, got -1\.0 \(from --config .*run\.yaml: learning_rate\)$"),
    ("broken_yaml", "run.yaml", "max_steps: [1\n", r"run\.yaml: not valid YAML: .* at line 2, column 1$"),
    ("broken_json", "run.json", '{"max_steps": 1,}', r"run\.json: not valid JSON: .* at line 1, column \d+$"),
    ("not_a_mapping", "run.yaml", "- max_steps\n", r"run\.yaml: it must map option names to values, but holds a list"),
    ("not_yaml_or_json", "run.toml", "max_steps = 1\n", r"run\.toml: a run config is a \.yaml, \.yml or \.json file"),
    ("nested_config", "run.yaml", "config: other.yaml\n", r"run\.yaml: unknown key 'config'"),
]  # fmt: skip


@pytest.mark.parametrize("name,filename,text,message", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_a_mistake_in_the_file_is_one_line_naming_the_file_and_key(tmp_path, capsys, name, filename, text, message):
    line = _error(capsys, ["--config", _write(tmp_path, filename, text)])
    assert ": error: " in line and re.search(message, line), line


def test_a_missing_file_is_one_line(capsys, tmp_path):
    line = _error(capsys, ["--config", str(tmp_path / "nope.yaml")])
    assert line.endswith("nope.yaml: no such file")


def test_an_empty_file_sets_nothing(tmp_path):
    path = _write(tmp_path, "run.yaml", "# nothing yet\n")
    assert parse(GRPOConfig, GRPO_DEFAULTS, ["--config", path]) == parse(GRPOConfig, GRPO_DEFAULTS, [])
