"""FSDP2 and DeepSpeed ZeRO on two CPU processes over gloo, launched the way users launch them.

Each run trains the tiny model for a few steps with a reward that differs inside a group,
so the weights really move; a 2-process sharded run must then match a 1-process run with
the same global batch (the same per-prompt samples, the same globally normalised loss).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from launching import ENV, accelerate_launch, torchrun


pytestmark = pytest.mark.xdist_group("test_fsdp")  # one worker: its module-scoped fixtures are built once

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate_configs"

TRAIN = '''
import os, sys
if os.environ.get("LLM_RL_TEST_ENGINE", "").startswith("zero"):
    # DeepSpeed's CPU accelerator compiles a shared-memory all-reduce (a C++ extension, about 50 s on a fresh
    # machine) on its first launch; plain gloo does the same reduction, and GPU runs never build it
    import importlib  # not deepspeed.comm.torch: deepspeed.comm's own `torch` attribute is the torch package
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
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
nan_step = settings.pop("nan_step", None)
if nan_step is not None:  # the policy loss of that step is NaN: its update must be skipped on every engine
    from llm_rl.trainers import grpo_trainer
    clipped = grpo_trainer.clipped_policy_loss
    def maybe_nan(*args, **kwargs):
        loss, stats = clipped(*args, **kwargs)
        return (loss * float("nan"), stats) if trainer.step + 1 == nan_step else (loss, stats)
    grpo_trainer.clipped_policy_loss = maybe_nan
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


FUSED_HEAD = '''
import gc, sys, warnings, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import Qwen2Config, Qwen2ForCausalLM
from llm_rl.models.forward import completion_logprobs
dist.init_process_group("gloo")
rank = dist.get_rank()
config = Qwen2Config(vocab_size=5000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=sys.argv[2] == "tied")
torch.manual_seed(0)
model = Qwen2ForCausalLM(config)
torch.save(model.state_dict(), sys.argv[1] + ".init") if rank == 0 else None
for layer in model.model.layers:  # as accelerate's auto-wrap: each decoder layer, then the root (embeddings, head)
    fully_shard(layer)
fully_shard(model)
torch.manual_seed(1)
ids = torch.randint(0, 5000, (2, 4, 9))  # one batch of 4 rows per rank
mask = torch.ones_like(ids)
mask[:, 0, :2] = 0
results = {}
for chunk in (3, 0):  # the fused head, then the model's full logits
    model.zero_grad()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logprobs, entropy, _ = completion_logprobs(model, ids[rank], mask[rank], 5, 0.7, with_entropy=True,
                                                   entropy_grad=True, tokens_per_chunk=chunk)
    assert not [w for w in caught if "full logits" in str(w.message)]  # no fallback: the fused head ran
    (logprobs.sum() + 0.1 * entropy.sum()).backward()  # FSDP averages the gradient over the ranks
    results[chunk] = {"logprobs": logprobs.detach(),  # rank 0's rows
                      "grads": {n: p.grad.full_tensor() for n, p in model.named_parameters()}}
    assert isinstance(model.lm_head.weight, torch.distributed.tensor.DTensor)  # resharded after the step
if rank == 0:
    torch.save(results, sys.argv[1])
del model
gc.collect()
dist.barrier()
dist.destroy_process_group()
'''


def _launch(tmp_path, config: str | None, run: str, *args: str) -> Path:
    """Run the training script under ``accelerate launch --config_file config`` (2 processes), or alone."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    out = tmp_path / run
    script_and_args = (script, args[0], args[1], out, *args[2:])
    # the GPU configs say 8 processes and bf16
    command = [sys.executable, *map(str, script_and_args)] if config is None else \
        accelerate_launch(*script_and_args, config=config, num_processes=2, mixed_precision="no")
    result = subprocess.run(command, env={**ENV, "LLM_RL_TEST_ENGINE": config or ""}, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stderr[-12000:]
    return out


def _rewards(run: Path) -> list:
    return [json.loads(line).get("reward_mean") for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fully_shard_trains_over_gloo_on_cpu(tmp_path):
    """torch's FSDP2 on CPU: each rank holds half of each weight, and a step equals the unsharded one."""
    (tmp_path / "toy.py").write_text(TOY)
    command = torchrun(tmp_path / "toy.py", tmp_path / "out.json")
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


# step 2's policy loss is NaN: every engine must skip that update and keep the learning-rate schedule going
NAN_STEP = ("nan_step=2", "lr_scheduler_type=linear")


@pytest.fixture(scope="module")
def one_process_grpo(tiny_model_dir, tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("alone"), None, "run", "grpo", tiny_model_dir, "4", *NAN_STEP)


def _needs(engine: str):
    missing = engine.startswith("zero") and importlib.util.find_spec("deepspeed") is None
    return pytest.param(engine, marks=pytest.mark.skipif(missing, reason="deepspeed is not installed (pip install 'llm-rl[deepspeed]')"))


@pytest.mark.slow
@pytest.mark.parametrize("engine", [_needs("fsdp"), _needs("zero2"), _needs("zero3")])
def test_grpo_sharded_on_two_processes_matches_one_process_and_skips_a_nan_step(engine, one_process_grpo, tiny_model_dir,
                                                                               tmp_path):
    """2 x 2 prompts == 1 x 4, with step 2's loss NaN. accelerate's DeepSpeed wrapper steps the engine inside
    ``backward``, before the trainer sees the gradient norm: there the skip must come from the engine itself
    (DeepSpeed >= 0.19 skips a step whose global norm is NaN/inf, on ZeRO-1/2 in bf16 only with
    ``bf16.check_grad_overflow``, which we set)."""
    from transformers import AutoModelForCausalLM

    sharded = _launch(tmp_path, engine, "run", "grpo", tiny_model_dir, "2", *NAN_STEP)
    summary = json.loads((sharded / "eval.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["distributed_type"] == ("FSDP" if engine == "fsdp" else "DEEPSPEED")
    assert _rewards(sharded) == _rewards(one_process_grpo)
    for run in (one_process_grpo, sharded):
        assert json.loads((run / "eval.json").read_text())["skipped_steps"] == 1
    rows = lambda run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]  # noqa: E731
    assert [r["learning_rate"] for r in rows(sharded)] == pytest.approx([r["learning_rate"] for r in rows(one_process_grpo)])

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
    """Sharded (DCP) checkpoints of policy, value head, optimizer and RNG: 4 steps straight through (saving at
    step 2) == a new run resumed from that step-2 checkpoint for the last 2 (two launches, not three)."""
    straight = _launch(tmp_path, "fsdp", "straight", "ppo", tiny_model_dir, "2", "max_steps=4", "save_steps=2")
    checkpoint = straight / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir()  # each process wrote its shard
    resumed = _launch(tmp_path, "fsdp", "resumed", "ppo", tiny_model_dir, "2", "max_steps=4", f"resume_from_checkpoint={checkpoint}")
    assert [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()][-1] == 4
    for file in ("model.safetensors", "value_head.safetensors"):
        a, b = load_file(straight / "final" / file), load_file(resumed / "final" / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file


@pytest.mark.slow
@pytest.mark.parametrize("tied", ["tied", "untied"])
def test_fused_lm_head_under_fsdp2_matches_the_full_logits_and_one_process(tmp_path, tied):
    """FSDP2 on 2 processes: the fused head reads the whole weight inside the root unit's forward, and
    backward reduce-scatters its gradient: log-probs and gradients equal the full-logits path and an
    unsharded run of both ranks' batches."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from llm_rl.models.forward import completion_logprobs

    (tmp_path / "fused.py").write_text(FUSED_HEAD)
    out = tmp_path / "out.pt"
    command = torchrun(tmp_path / "fused.py", out, tied)
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    sharded = torch.load(out)
    fused, full = sharded[3], sharded[0]
    torch.testing.assert_close(fused["logprobs"], full["logprobs"], atol=1e-5, rtol=1e-4)
    assert fused["grads"].keys() == full["grads"].keys()
    for name, want in full["grads"].items():
        torch.testing.assert_close(fused["grads"][name], want, atol=1e-5 * (1 + want.abs().max().item()), rtol=1e-4)

    config = Qwen2Config(vocab_size=5000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=tied == "tied")  # fmt: skip
    model = Qwen2ForCausalLM(config)
    model.load_state_dict(torch.load(str(out) + ".init"))
    torch.manual_seed(1)
    ids = torch.randint(0, 5000, (2, 4, 9))
    mask = torch.ones_like(ids)
    mask[:, 0, :2] = 0
    for rank in range(2):  # the mean over ranks' losses, as FSDP's averaged gradient
        logprobs, entropy, _ = completion_logprobs(model, ids[rank], mask[rank], 5, 0.7, with_entropy=True, entropy_grad=True,
                                                   tokens_per_chunk=3)  # fmt: skip
        ((logprobs.sum() + 0.1 * entropy.sum()) / 2).backward()
    for name, param in model.named_parameters():
        want = param.grad
        torch.testing.assert_close(fused["grads"][name], want, atol=1e-5 * (1 + want.abs().max().item()), rtol=1e-4)
