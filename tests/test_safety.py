"""Safety: model text is never run, remote code is off by default, weights are never pickled.

- A completion holding code scores 0 under the rule rewards and runs nothing.
- ``trust_remote_code`` is False in every config and loader unless asked for.
- The package source has no ``eval``/``exec``/pickle/``sympify``, and every ``torch.load``
  passes ``weights_only=True`` (checked on the syntax tree, so docstrings that *mention*
  ``eval`` do not count and ``model.eval()`` is not a call to the builtin).
- Checkpoints hold the weights in safetensors, and resuming loads every torch-saved file
  (optimizer, RNG states) with ``weights_only=True``.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, RLConfig
from llm_rl.models.loading import load_causal_lm, load_tokenizer
from llm_rl.reward_training import RewardModelConfig
from reward_models import LearnedReward, compute_rewards, format_reward, math_correctness

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_SOURCES = sorted(p for folder in ("llm_rl", "reward_models", "recipes") for p in (ROOT / folder).rglob("*.py"))

# (completion, the gold answer an *evaluating* scorer would have matched)
CODE_COMPLETIONS = [
    ("__import__('os').system('touch pwned')", "0"),  # os.system returns 0 on success
    ("#### __import__('os').system('touch pwned')", "0"),
    ("\\boxed{__import__('os').system('touch pwned')}", "0"),
    ("exec(\"import os; os.system('touch pwned')\")", "0"),
    ("The answer is eval(\"__import__('os').system('touch pwned') or 6*7\")", "42"),
    ("#### eval('6*7')", "42"),
    ("\\boxed{2**10}", "1024"),  # what sympify / eval would compute
    ("sympify('2**10')", "1024"),
    ("The answer is Integer(2)**10", "1024"),
    ("cposix\nsystem\n(Vtouch pwned\ntR.", "0"),  # a protocol-0 pickle calling os.system
]


def test_code_in_completions_scores_zero_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a payload that ran would create ./pwned here
    completions = [c for c, _ in CODE_COMPLETIONS]
    columns = {"answer": [gold for _, gold in CODE_COMPLETIONS]}
    prompts = ["What is 6 * 7?"] * len(completions)
    assert math_correctness(prompts, completions, **columns) == [0.0] * len(completions)
    assert format_reward(prompts, completions) == [0.0] * len(completions)
    chats = [[{"role": "assistant", "content": c}] for c in completions]
    total, _ = compute_rewards([math_correctness, format_reward], None, prompts, chats, columns)
    assert total.tolist() == [0.0] * len(completions)
    assert not (tmp_path / "pwned").exists()


# --- trust_remote_code ------------------------------------------------------------------------------


@pytest.mark.parametrize("config_class", [RLConfig, GRPOConfig, PPOConfig, RewardModelConfig])
def test_configs_do_not_trust_remote_code_by_default(config_class):
    assert config_class().trust_remote_code is False


@pytest.mark.parametrize("loader", [load_tokenizer, load_causal_lm, LearnedReward.__init__])
def test_loaders_do_not_trust_remote_code_by_default(loader):
    assert inspect.signature(loader).parameters["trust_remote_code"].default is False


def test_no_source_turns_trust_remote_code_on():
    for path in PACKAGE_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), path


# --- nothing in the package can run text or unpickle -----------------------------------------------

FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib", "sympy"}
FORBIDDEN_NAMES = {"sympify", "parse_expr"}


def _is_torch_load(call: ast.Call) -> bool:
    f = call.func
    return isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch"


def unsafe_constructs(source: str) -> list[str]:
    """Calls and imports that could run text or unpickle, found on the syntax tree of ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_BUILTINS:
            found.append(f"{node.func.id}(")  # a builtin; model.eval() is an Attribute and not matched
        elif isinstance(node, ast.Call) and _is_torch_load(node):
            weights_only = {k.arg: k.value for k in node.keywords}.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append("torch.load( without weights_only=True")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in FORBIDDEN_MODULES or (module == "torch" and any(a.name == "load" for a in node.names)):
                found.append(f"from {node.module} import")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            found.append(node.attr)
    return found


def test_the_scanner_finds_what_it_looks_for():
    bad = (
        "import pickle\nfrom sympy import sympify\nx = eval(text)\nexec(code)\nsympy.sympify(text)\n"
        "torch.load(path)\ntorch.load(path, weights_only=False)\ntorch.load(path, weights_only=True)\n"
        "model.eval()\n'''never eval() model text'''\n"
    )
    assert sorted(unsafe_constructs(bad)) == sorted([
        "pickle", "from sympy import", "eval(", "exec(", "sympify",
        "torch.load( without weights_only=True", "torch.load( without weights_only=True",
    ])


@pytest.mark.parametrize("path", PACKAGE_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_package_source_never_runs_text_or_unpickles(path):
    assert unsafe_constructs(path.read_text()) == []


# --- checkpoints ------------------------------------------------------------------------------------


def test_checkpoints_keep_weights_in_safetensors_and_resume_loads_only_with_weights_only(tiny_model_dir, tmp_path, monkeypatch):
    from llm_rl.data import arithmetic_dataset

    def config(**more):
        return GRPOConfig(output_dir=str(tmp_path / "run"), per_device_batch_size=2, num_generations=2,
                          max_completion_length=4, save_steps=1, **more)

    def reward(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    GRPOTrainer(tiny_model_dir, [reward], args=config(max_steps=1), train_dataset=arithmetic_dataset(8)).train()
    # weights in safetensors; optimizer moments and RNG states are accelerate's torch.save files
    assert {p.name for p in (tmp_path / "run" / "checkpoint-1").iterdir()} == {
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state.json"}
    final = {p.name for p in (tmp_path / "run" / "final").iterdir()}
    assert "model.safetensors" in final and not [n for n in final if n.endswith((".bin", ".pt", ".pth", ".pkl"))]

    weights_only = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        weights_only.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    resumed = GRPOTrainer(tiny_model_dir, [reward], args=config(max_steps=2, resume_from_checkpoint="latest"),
                          train_dataset=arithmetic_dataset(8))
    assert resumed.train()["steps"] == 2
    assert len(weights_only) == 2 and all(w is True for w in weights_only)  # optimizer.bin and random_states_0.pkl
