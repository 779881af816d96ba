"""``report_to``: accelerate's trackers, several at once, each read back from what it wrote, with no network.

wandb runs offline (``WANDB_MODE=offline``: its run folder goes under output_dir), mlflow
to a file store under tmp_path, tensorboard as before. Each must hold the run config, the
llm_rl version and the same metrics as metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

import llm_rl
from llm_rl import GRPOConfig, GRPOTrainer
from llm_rl.trainers import config as config_module
from llm_rl.trainers.config import ConfigError
from llm_rl.trainers.trackers import run_config


def _length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def _wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` run file: a 7-byte header, then LevelDB-log blocks of protobuf ``Record``s.

    (wandb >= 0.19 reads these in its Go core only; ``wandb sync`` is what uploads them.)
    """
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending, records = path.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]  # crc32c(4) length(2) type(1)
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of a FIRST/MIDDLE/LAST chain
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


# ----------------------------------------------------------------------------- report_to's values


def test_report_to_takes_a_name_a_list_or_commas():
    assert GRPOConfig().report_to == []
    assert GRPOConfig(report_to="none").report_to == []
    assert GRPOConfig(report_to="tensorboard").report_to == ["tensorboard"]
    assert GRPOConfig(report_to="tensorboard, mlflow").report_to == ["tensorboard", "mlflow"]
    assert GRPOConfig(report_to=["tensorboard", "mlflow"]).report_to == ["tensorboard", "mlflow"]


@pytest.mark.parametrize("report_to,message", [
    ("tensorbord", r"report_to: 'tensorbord' is not a tracker llm_rl supports; choose from tensorboard, wandb, mlflow, trackio, comet_ml"),
    (["none", "wandb"], r"report_to lists 'none' together with \['wandb'\]"),
    (3, r"report_to must be str \| list\[str\], got 3"),
])  # fmt: skip
def test_bad_report_to_is_a_config_error(report_to, message):
    with pytest.raises(ConfigError, match=message):
        GRPOConfig(report_to=report_to)


def test_a_tracker_that_is_not_installed_names_its_extra(monkeypatch):
    monkeypatch.setitem(config_module.TRACKERS, "comet_ml", "no_such_module_for_comet")
    with pytest.raises(ConfigError, match=r"report_to='comet_ml' needs the no_such_module_for_comet package.*pip install 'llm-rl\[comet_ml\]'"):
        GRPOConfig(report_to=["tensorboard", "comet_ml"])


def test_run_config_holds_every_field_and_the_versions():
    args = GRPOConfig(reward_weights=[1.0], report_to="tensorboard")
    values = run_config(args)
    assert values["llm_rl_version"] == llm_rl.__version__ and values["torch_version"] == torch.__version__
    assert values["learning_rate"] == args.learning_rate and values["reward_weights"] == "[1.0]"
    assert set(vars(args)) < set(values)
    assert all(isinstance(v, (bool, int, float, str)) for v in values.values())  # what tensorboard's hparams take


# ----------------------------------------------------------------------------- three trackers at once, read back


@pytest.mark.slow
def test_wandb_mlflow_and_tensorboard_at_once(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the dev extra installs wandb")
    pytest.importorskip("mlflow", reason="the dev extra installs mlflow-skinny")
    pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"file:{tmp_path / 'mlruns'}"
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": store,
                        "MLFLOW_ALLOW_FILE_STORE": "true"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for name in ("WANDB_DIR", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "tracked_run"
    args = GRPOConfig(output_dir=str(out), max_steps=2, per_device_batch_size=2, num_generations=2, max_completion_length=2,
                      warmup_steps=0, report_to="wandb,mlflow,tensorboard")  # fmt: skip
    dataset = Dataset.from_list([{"prompt": f"What is {i} + 1? Answer:"} for i in range(8)])
    GRPOTrainer(tiny_model_dir, [_length_reward], args=args, train_dataset=dataset).train()
    logged = {row["step"]: row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert sorted(logged) == [1, 2]

    # wandb: the offline run folder under output_dir, with the config and every step's metrics
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    config = {k: v for r in records if r.WhichOneof("record_type") == "config" for k, v in _items(r.config.update).items()}
    assert config["llm_rl_version"] == llm_rl.__version__ and config["learning_rate"] == args.learning_rate
    assert config["report_to"] == "['wandb', 'mlflow', 'tensorboard']" and config["model"] == tiny_model_dir
    assert config["num_processes"] == 1
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [1, 2]
    for row in history:
        assert row["reward_mean"] == pytest.approx(logged[row["_step"]]["reward_mean"])
        assert row["loss"] == pytest.approx(logged[row["_step"]]["loss"])

    # mlflow: an experiment named after output_dir in the file store, params and metric history
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(out.name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["llm_rl_version"] == llm_rl.__version__
    assert float(run.data.params["learning_rate"]) == args.learning_rate
    assert run.info.status == "FINISHED"
    points = client.get_metric_history(run.info.run_id, "reward_mean")
    assert [(p.step, pytest.approx(p.value)) for p in points] == [(s, logged[s]["reward_mean"]) for s in (1, 2)]

    # tensorboard: scalars per step under output_dir/<run name>
    (events,) = {p.parent for p in out.rglob("events.out.tfevents.*") if "reward_mean" in EventAccumulator(str(p.parent)).Reload().Tags()["scalars"]}
    scalars = EventAccumulator(str(events)).Reload().Scalars("reward_mean")
    assert [(s.step, pytest.approx(s.value, rel=1e-5)) for s in scalars] == [(s, logged[s]["reward_mean"]) for s in (1, 2)]
