"""Start a script on 2 CPU processes, each launch on its own free port: `pytest -n 2` runs two launches at once,
and two rendezvous on accelerate's default port 29500 would meet each other."""

import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate_configs"
# one thread per process: the launched processes share the test machine's cores with each other and with pytest
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def accelerate_launch(*script_and_args, config: str = "cpu_2proc", num_processes: int | None = None,
                      mixed_precision: str | None = None) -> list[str]:
    """``accelerate launch --config_file recipes/accelerate_configs/{config}.yaml`` on a free port."""
    options = ["--config_file", str(CONFIGS / f"{config}.yaml"), "--main_process_port", str(free_port())]
    if num_processes is not None:
        options += ["--num_processes", str(num_processes)]
    if mixed_precision is not None:
        options += ["--mixed_precision", mixed_precision]
    return [sys.executable, "-m", "accelerate.commands.launch", *options, *map(str, script_and_args)]


def torchrun(*script_and_args, nproc: int = 2) -> list[str]:
    """``torch.distributed.run`` on 2 processes; ``--standalone`` picks a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            *map(str, script_and_args)]


def run_alone_and_on_two_processes(script, model: str, out, timeout: int = 300) -> None:
    """``script MODEL OUT/one 4`` in one process, then ``script MODEL OUT/two 2`` on 2 (the same global batch);
    each must exit 0."""
    import subprocess

    for command in ([sys.executable, str(script), model, str(out / "one"), "4"],
                    accelerate_launch(script, model, out / "two", "2")):  # fmt: skip
        result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]
