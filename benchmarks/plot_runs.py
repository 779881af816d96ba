"""Held-out accuracy against training time for several runs (e.g. one per seed), as a PNG.

    python benchmarks/plot_runs.py outputs/seed0 outputs/seed1 outputs/seed2 --out accuracy_vs_time.png

Time is the sum of the runs' own ``step_seconds`` (evaluation excluded), so runs that
shared the machine are compared on the time their steps took, not wall-clock. Prints
the table it plots.
"""

import argparse
from pathlib import Path

from llm_rl.trainers.logging import read_metrics


def accuracy_over_time(run: Path) -> list[tuple[int, float, float]]:
    elapsed, points = 0.0, []
    for row in read_metrics(run / "metrics.jsonl"):
        elapsed += row.get("step_seconds", 0.0)
        if "accuracy" in row:
            points.append((row["step"], elapsed, row["accuracy"]))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output_dir of each run")
    parser.add_argument("--out", default="accuracy_vs_time.png", help="PNG to write")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in args.runs:
        points = accuracy_over_time(run)
        print(f"{run}: " + ", ".join(f"step {s} ({t:.0f} s) {a:.1%}" for s, t, a in points))
        ax.plot([t / 60 for _, t, _ in points], [a for _, _, a in points], "o-", label=run.name)
    ax.set(xlabel="training time (minutes, step time only)", ylabel="held-out greedy accuracy", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
