"""FSDP2 and DeepSpeed ZeRO on two CPU processes over gloo, launched the way users launch them.

Each run trains the tiny model for a few steps with a reward that differs inside a group,
so the weights really move; a 2-process sharded run must then match a 1-process run with
the same global batch (the same per-prompt samples, the same globally normalised loss).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate_configs"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

TRAIN = '''
import sys
from llm_rl import GRPOConfig, GRPOTrainer, PPOConfig, PPOTrainer
from llm_rl.data import arithmetic_dataset

def length_mod_3(prompts, completions, **kwargs):
    return [float(len(c) % 3) for c in completions]

algorithm, model, output_dir, per_device, *options = sys.argv[1:]
trainer_class, config_class = {"grpo": (GRPOTrainer, GRPOConfig), "ppo": (PPOTrainer, PPOConfig)}[algorithm]
settings = dict(output_dir=output_dir, max_steps=3, per_device_batch_size=int(per_device), num_generations=2,
                max_completion_length=4, learning_rate=1e-2)
for option in options:  # key=value, integers or strings
    key, value = option.split("=")
    settings[key] = int(value) if value.isdigit() else value
trainer = trainer_class(model, [length_mod_3], args=config_class(**settings), train_dataset=arithmetic_dataset(32, seed=2),
                        eval_fn=lambda lm, tokenizer: {"accuracy": 0.0})  # an eval_fn makes the run write eval.json
trainer.train()
trainer.save_model(output_dir + "/saved_after_train")  # the process group outlives train()
'''

TOY = '''
import gc, json, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
fully_shard(model[0]); fully_shard(model[2]); fully_shard(model)
local_rows = model[0].weight.to_local().shape[0]
torch.manual_seed(1)
inputs = torch.randn(2, 3, 8)  # one batch per rank
loss = model(inputs[rank]).pow(2).mean()
loss.backward()  # FSDP reduce-scatters the gradient averaged over the ranks
torch.optim.SGD(model.parameters(), lr=0.1).step()
full = {k: v.full_tensor().tolist() for k, v in model.state_dict().items()}
if rank == 0:
    json.dump({"local_rows": local_rows, "full": full}, open(sys.argv[1], "w"))
del model, loss  # FSDP2's DTensors hold the group: free them first, or exit aborts now and then (SIGABRT)
gc.collect()
dist.barrier()
dist.destroy_process_group()
'''


def _launch(tmp_path, config: str | None, run: str, *args: str) -> Path:
    """Run the training script under ``accelerate launch --config_file config`` (2 processes), or alone."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    out = tmp_path / run
    launcher = [] if config is None else [
        "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
        "--num_processes", "2", "--mixed_precision", "no",  # the GPU configs say 8 processes and bf16
    ]
    result = subprocess.run([sys.executable, *launcher, str(script), args[0], args[1], str(out), *args[2:]],
                            env=ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-12000:]
    return out


def _rewards(run: Path) -> list:
    return [json.loads(line).get("reward_mean") for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fully_shard_trains_over_gloo_on_cpu(tmp_path):
    """torch's FSDP2 on CPU: each rank holds half of each weight, and a step equals the unsharded one."""
    (tmp_path / "toy.py").write_text(TOY)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(tmp_path / "toy.py"),
               str(tmp_path / "out.json")]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["local_rows"] == 8  # 16 rows sharded over 2 ranks

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    torch.manual_seed(1)
    inputs = torch.randn(2, 3, 8)
    loss = (model(inputs[0]).pow(2).mean() + model(inputs[1]).pow(2).mean()) / 2
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for name, value in model.state_dict().items():
        assert torch.allclose(torch.tensor(out["full"][name]), value, atol=1e-6), name


@pytest.fixture(scope="module")
def one_process_grpo(tiny_model_dir, tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("alone"), None, "run", "grpo", tiny_model_dir, "4")


def _needs(engine: str):
    missing = engine.startswith("zero") and importlib.util.find_spec("deepspeed") is None
    return pytest.param(engine, marks=pytest.mark.skipif(missing, reason="deepspeed is not installed (pip install 'llm-rl[deepspeed]')"))


@pytest.mark.slow
@pytest.mark.parametrize("engine", [_needs("fsdp"), _needs("zero2"), _needs("zero3")])
def test_grpo_sharded_on_two_processes_matches_one_process(engine, one_process_grpo, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = _launch(tmp_path, engine, "run", "grpo", tiny_model_dir, "2")  # 2 x 2 prompts == 1 x 4
    summary = json.loads((sharded / "eval.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["distributed_type"] == ("FSDP" if engine == "fsdp" else "DEEPSPEED")
    assert _rewards(sharded) == _rewards(one_process_grpo)

    alone, together = load_file(one_process_grpo / "final" / "model.safetensors"), load_file(sharded / "final" / "model.safetensors")
    assert alone.keys() == together.keys()  # gathered whole, tied weights saved once
    again = load_file(sharded / "saved_after_train" / "model.safetensors")
    assert all(torch.equal(again[k], together[k]) for k in together)
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(together[k], initial[k]) for k in together)  # it trained
    for name in alone:
        assert torch.allclose(alone[name], together[name], atol=1e-5), name
    loaded = AutoModelForCausalLM.from_pretrained(sharded / "final")
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, together.get(name, together["model.embed_tokens.weight"])), name


@pytest.mark.slow
def test_ppo_fsdp2_resumes_a_sharded_checkpoint_bit_identically(tiny_model_dir, tmp_path):
    """Sharded (DCP) checkpoints of policy, value head, optimizer and RNG: 2 steps + 2 resumed == 4 steps."""
    straight = _launch(tmp_path, "fsdp", "straight", "ppo", tiny_model_dir, "2", "max_steps=4")
    _launch(tmp_path, "fsdp", "stopped", "ppo", tiny_model_dir, "2", "max_steps=2", "save_steps=2")
    resumed = _launch(tmp_path, "fsdp", "stopped", "ppo", tiny_model_dir, "2", "max_steps=4", "resume_from_checkpoint=latest")
    assert (resumed / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()  # each process wrote its shard
    for file in ("model.safetensors", "value_head.safetensors"):
        a, b = load_file(straight / "final" / file), load_file(resumed / "final" / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
