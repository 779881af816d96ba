"""Metrics out of a run: one JSON line per logged step, an optional tracker, a progress bar, a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm.auto import tqdm

PROGRESS_KEYS = ("reward_mean", "kl", "accuracy")


class MetricsLogger:
    """Writes ``metrics.jsonl`` and tracker logs on the main process; drives the progress bar."""

    def __init__(self, accelerator, output_dir: str, max_steps: int, initial_step: int = 0):
        self.accelerator = accelerator
        self.path = Path(output_dir) / "metrics.jsonl"
        if initial_step and accelerator.is_main_process and self.path.exists():
            # Resumed: a killed run may have logged steps after its last checkpoint; they are redone now.
            kept = [row for row in read_metrics(self.path) if row["step"] <= initial_step]
            self.path.write_text("".join(f"{json.dumps(row)}\n" for row in kept))
        self.bar = tqdm(
            total=max_steps, initial=initial_step, desc="training", disable=not accelerator.is_main_process, dynamic_ncols=True
        )

    def log(self, metrics: dict, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        clean = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        self.accelerator.log({k: v for k, v in clean.items() if isinstance(v, (int, float))}, step=step)
        self.bar.set_postfix({k: f"{clean[k]:.3f}" for k in PROGRESS_KEYS if isinstance(clean.get(k), float)})

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # blank, or cut off by a kill mid-write
            continue
    return rows


def plot_reward_curve(metrics_path: str | Path, out_path: str | Path, title: str = "") -> Path | None:
    """Reward (and held-out accuracy, when logged) against step and wall time, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'llm-rl[plot]'): skipping the reward plot")
        return None
    rows = read_metrics(metrics_path)
    steps = [r["step"] for r in rows if "reward_mean" in r]
    rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
    evals = [(r["step"], r["accuracy"]) for r in rows if "accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, rewards, label="mean reward (training batch)", color="tab:blue", alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    if evals:
        acc_ax = ax.twinx()
        acc_ax.plot(*zip(*evals), "o-", color="tab:red", label="held-out greedy accuracy")
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_ylim(0, 1)
        acc_ax.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title(title or Path(metrics_path).parent.name)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return Path(out_path)
