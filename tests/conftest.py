"""Shared fixtures: an even smaller, un-warm-started variant of the tiny model, built in seconds."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test must never reach a model hub

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from llm_rl.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved 2-layer, 32-wide Qwen2 (random weights) + tokenizer, loadable with from_pretrained."""
    from llm_rl.models.tiny import build_untrained

    path = tmp_path_factory.mktemp("tiny-model")
    model = build_untrained(tiny_tokenizer, seed=0, hidden_size=32, num_layers=2)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def gsm8k_dir():
    path = SHARED_DATA / "gsm8k"
    if not (path / "test.jsonl").exists():
        pytest.skip("../shared/data/gsm8k is not present")
    return path
