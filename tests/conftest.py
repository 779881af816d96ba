"""Shared fixtures: an even smaller, un-warm-started variant of the tiny model, built in seconds."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test must never reach a model hub

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # pytest -n N: share the cores between the workers, not oversubscribe them
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = _threads  # the scripts the tests start inherit it too

    import torch

    torch.set_num_threads(int(_threads))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_warm_model_built_by_the_controller = False


def pytest_collection_modifyitems(config, items):
    """Slow tests first (a stable sort, so each file keeps its order): pytest-xdist hands tests out in collection
    order, so the minute-long ones start while the other worker still has short ones to take, instead of one of them
    running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: without xdist it is never called
def pytest_xdist_node_collection_finished(node, ids):
    """pytest -n N, in the controller, before any test is sent out: when a collected file needs the warm tiny
    model and it is not cached, build it here on every core, instead of in one worker on its share of the cores
    while another worker that needs it waits on the build's lock (measured: 201 s in a worker, against about
    60 s alone)."""
    global _warm_model_built_by_the_controller
    if _warm_model_built_by_the_controller:
        return
    _warm_model_built_by_the_controller = True
    files = {node.config.rootpath / test_id.split("::")[0] for test_id in ids}
    if any("warm_tiny_model_dir" in path.read_text() for path in files if path.name != "conftest.py"):
        from llm_rl.models.tiny import ensure_tiny_model

        ensure_tiny_model(log=lambda message: print(f"\n[conftest] {message}", flush=True))


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
def warm_tiny_model_dir():
    """The embedded, warm-started tiny model (built once, about a minute, then cached): its completions
    get varied math_correctness rewards, where the random model's get all 0 and train nothing."""
    from llm_rl.models.tiny import ensure_tiny_model

    return str(ensure_tiny_model(log=lambda *_: None))


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose precision cannot change: start these tests from none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate's own test suite does the same
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def gsm8k_dir():
    path = SHARED_DATA / "gsm8k"
    if not (path / "test.jsonl").exists():
        pytest.skip("../shared/data/gsm8k is not present")
    return path


@pytest.fixture(scope="session")
def qwen_like_dir(tmp_path_factory):
    """A saved checkpoint with a real Qwen2.5-Instruct checkpoint's conditions (see realistic_checkpoint.py):
    bf16 weights, untied head, 20k-token vocabulary, two EOS ids with pad == one of them, sampling settings
    and a repetition penalty (2.0, large so that its effect shows) in generation_config.json, and a
    chat template with a default system prompt."""
    from realistic_checkpoint import build_qwen_like_checkpoint

    return str(build_qwen_like_checkpoint(tmp_path_factory.mktemp("qwen-like"), repetition_penalty=2.0))
