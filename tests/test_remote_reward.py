"""RemoteReward against real servers on 127.0.0.1 only: the example FastAPI server
(recipes/reward_server.py, as a subprocess) and small stdlib servers that fail on purpose."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

pytest.importorskip("requests", reason="RemoteReward needs requests (the remote extra, in dev)")

from llm_rl import GRPOConfig, GRPOTrainer  # noqa: E402
from llm_rl.trainers.checkpoint import latest_checkpoint  # noqa: E402
from reward_models import RemoteReward, RewardError, compute_rewards  # noqa: E402
from launching import free_port  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


class ExampleServer:
    """recipes/reward_server.py in a subprocess, on 127.0.0.1 and a free port; start() and kill() at will."""

    def __init__(self):
        self.port, self.process = free_port(), None
        self.url = f"http://{LOOPBACK}:{self.port}/score"

    def start(self) -> None:
        pytest.importorskip("fastapi", reason="the example server needs the serve extra (in dev)")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "reward_server.py"), "--host", LOOPBACK,
                                         "--port", str(self.port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import requests

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"reward server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if requests.get(f"http://{LOOPBACK}:{self.port}/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("reward server did not come up within 120 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def server():
    example = ExampleServer()
    example.start()
    yield example
    example.kill()


def test_the_example_server_scores_math_correctness(server):
    import requests

    remote = RemoteReward(server.url, timeout=30, retries=0)
    prompts = ["What is 2 + 2?", "What is 3 * 3?", "What is 5 - 1?"]
    assert remote(prompts, ["#### 4", "The answer is 8.", "4"], answer=["4", "9", "4"]) == [1.0, 0.0, 1.0]
    chats = [[{"role": "assistant", "content": c}] for c in ["4", "9"]]
    total, per_func = compute_rewards([remote], None, [[{"role": "user", "content": p}] for p in prompts[:2]], chats,
                                      {"answer": ["4", "9"]}, completion_ids=[[1], [2]])
    assert total.tolist() == [1.0, 1.0] and list(per_func) == ["remote_reward"]
    # the server refuses an inconsistent batch with a 400, which the client does not retry
    bad = requests.post(server.url, json={"prompts": ["a"], "completions": ["1", "2"], "columns": {"answer": ["1", "2"]}})
    assert bad.status_code == 400
    with pytest.raises(RewardError, match="answered HTTP 400.*not retried"):
        RemoteReward(server.url, retries=3)(["a"], ["1"])  # no `answer` column: math_correctness rejects it


def _config(out, **more):
    return GRPOConfig(output_dir=str(out), max_steps=2, per_device_batch_size=2, num_generations=2, max_completion_length=4,
                      learning_rate=1e-2, **more)


def length_reward(prompts, completions, **kwargs):  # a local reward that varies, so the weights really move
    return [float(len(c) % 3) for c in completions]


def _dataset():
    from llm_rl.data import arithmetic_dataset

    return arithmetic_dataset(16, seed=2)


@pytest.mark.slow
def test_grpo_against_the_server_then_killed_mid_run_then_resumed_bit_identically(server, tiny_model_dir, tmp_path):
    remote = lambda: RemoteReward(server.url, timeout=10, retries=2, backoff=0.05)  # noqa: E731

    # uninterrupted: two steps, scored by the server every step
    straight = GRPOTrainer(tiny_model_dir, [length_reward, remote()], args=_config(tmp_path / "a", save_steps=1),
                           train_dataset=_dataset())
    straight.train()
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["reward/remote_reward"] in (0.0, 0.25, 0.5, 0.75, 1.0) for r in rows)

    # the server dies in step 2, just before the remote call: the run stops after its retries, with a clear error
    def kills_the_server_in_step_2(prompts, completions, trainer_state, **kwargs):
        if trainer_state.global_step == 1:
            server.kill()
        return [0.0] * len(completions)

    interrupted = GRPOTrainer(tiny_model_dir, [length_reward, kills_the_server_in_step_2, remote()],
                              args=_config(tmp_path / "b", save_steps=1), train_dataset=_dataset())
    with pytest.raises(RewardError, match=r"'remote_reward' raised RewardError: Reward server .* gave no rewards after 3 "
                                          r"attempts \(2 retries with backoff\): the last one could not connect"):
        interrupted.train()
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-1"

    # the server is back: the resumed run ends exactly where the uninterrupted one did
    server.start()
    zero = lambda prompts, completions, **kwargs: [0.0] * len(completions)  # noqa: E731 (what the killer returned)
    resumed = GRPOTrainer(tiny_model_dir, [length_reward, zero, remote()],
                          args=_config(tmp_path / "b", save_steps=1, resume_from_checkpoint="latest"), train_dataset=_dataset())
    resumed.train()
    assert resumed.step == 2
    changed = False
    for (name, p), (_, q), (_, r) in zip(straight.unwrapped.named_parameters(), resumed.unwrapped.named_parameters(),
                                         interrupted.unwrapped.named_parameters()):
        assert torch.equal(p, q), name
        changed |= not torch.equal(p, r)
    assert changed  # step 2 moved the weights: equal weights are no accident


# ---------------------------------------------------------------- failure modes, on stdlib servers


class Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, body) of ``script``; the last one repeats."""

    script: list = []
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        status, answer = self.script[min(len(self.requests) - 1, len(self.script) - 1)]
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    servers = []

    def serve(*script):
        handler = type("Handler", (Scripted,), {"script": list(script), "requests": []})
        httpd = ThreadingHTTPServer((LOOPBACK, 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://{LOOPBACK}:{httpd.server_address[1]}/score", handler

    yield serve
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_sends_the_batch_as_json_and_reads_floats_and_nulls(scripted):
    url, handler = scripted((200, {"rewards": [0.5, None]}))
    assert RemoteReward(url)(["p", "q"], ["c", "d"], answer=["1", "2"], completion_ids=[[1], [2]], trainer_state=object()) == [0.5, None]
    assert handler.requests == [{"prompts": ["p", "q"], "completions": ["c", "d"], "columns": {"answer": ["1", "2"]}}]
    url, _ = scripted((200, [1, 2.5]))  # a bare list is accepted too
    assert RemoteReward(url)(["p", "q"], ["c", "d"]) == [1.0, 2.5]


def test_retries_5xx_with_backoff_then_succeeds(scripted):
    url, handler = scripted((503, "busy"), (500, "oops"), (200, {"rewards": [1.0]}))
    assert RemoteReward(url, retries=2, backoff=0.01)(["p"], ["c"]) == [1.0]
    assert len(handler.requests) == 3


def test_gives_up_after_its_retries_naming_the_last_problem(scripted):
    url, handler = scripted((502, "bad gateway"))
    with pytest.raises(RewardError, match=r"gave no rewards after 2 attempts \(1 retries with backoff\): the last one answered HTTP 502"):
        RemoteReward(url, retries=1, backoff=0.01)(["p"], ["c"])
    assert len(handler.requests) == 2


def test_a_4xx_is_not_retried(scripted):
    url, handler = scripted((404, "no such route"))
    with pytest.raises(RewardError, match="answered HTTP 404.*not retried"):
        RemoteReward(url, retries=5, backoff=0.01)(["p"], ["c"])
    assert len(handler.requests) == 1


@pytest.mark.parametrize("answer, message", [
    ({"rewards": [1.0]}, "answered 1 rewards for 2 completions"),
    ({"scores": [1.0, 2.0]}, "for 2 completions"),
    ({"rewards": ["1.0", 2.0]}, "answered '1.0' for sample 0"),
    ("<html>not json</html>", "not JSON"),
])
def test_a_body_that_is_not_one_reward_per_completion_fails_at_once(scripted, answer, message):
    url, handler = scripted((200, answer))
    with pytest.raises(RewardError, match=message):
        RemoteReward(url, retries=3, backoff=0.01)(["p", "q"], ["c", "d"])
    assert len(handler.requests) == 1


def test_connection_refused_is_retried_then_a_clear_error():
    url = f"http://{LOOPBACK}:{free_port()}/score"  # nothing listens there
    with pytest.raises(RewardError, match=r"after 3 attempts.*could not connect.*Check that the server is running"):
        RemoteReward(url, retries=2, backoff=0.01)(["p"], ["c"])


def test_a_server_that_never_answers_times_out_instead_of_hanging():
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(8)  # accepts connections (the kernel does) but never reads or answers
    url = f"http://{LOOPBACK}:{listener.getsockname()[1]}/score"
    try:
        with pytest.raises(RewardError, match=r"after 2 attempts.*timed out"):
            RemoteReward(url, timeout=0.3, retries=1, backoff=0.01)(["p"], ["c"])
    finally:
        listener.close()


def test_bad_arguments_and_unserialisable_columns():
    with pytest.raises(ValueError, match="http"):
        RemoteReward("127.0.0.1:8000/score")
    with pytest.raises(ValueError, match="retries"):
        RemoteReward("http://127.0.0.1:1/score", retries=-1)
    with pytest.raises(ValueError, match="timeout"):
        RemoteReward("http://127.0.0.1:1/score", timeout=0)
    with pytest.raises(RewardError, match="JSON"):
        RemoteReward("http://127.0.0.1:1/score")(["p"], ["c"], when=[object()])


def test_the_client_imports_without_the_server_extra():
    code = ("import sys; sys.modules['fastapi'] = sys.modules['uvicorn'] = sys.modules['starlette'] = None\n"
            "from reward_models import RemoteReward; print(RemoteReward('http://127.0.0.1:1/score'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "RemoteReward('http://127.0.0.1:1/score'" in result.stdout, result.stderr[-2000:]
