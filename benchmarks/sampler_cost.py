"""Cost of one ``GroupSampler`` decoding step at a real vocabulary (Qwen2.5's 151,936 tokens).

    python benchmarks/sampler_cost.py                                   # 16 rows, 1 thread
    git show HEAD~1:llm_rl/rollout/sampler.py > OLD.py
    python benchmarks/sampler_cost.py --compare OLD.py                  # side by side with another sampler.py

Times ``GroupSampler.__call__`` on random ``(rows, V)`` float32 logits (what ``generate``
hands a logits processor) for top_p = 1, top_p = 0.95 and top_k = 50 (+ top_p = 0.95),
on "peaked" logits (a trained model: a nucleus of a few tokens) and "flat" ones (random
weights: a nucleus of most of the vocabulary, which still takes a sort of every row). ``--compare PATH`` loads another version
of ``llm_rl/rollout/sampler.py`` (e.g. ``git show HEAD~1:llm_rl/rollout/sampler.py``)
and interleaves the two, repeat by repeat, at the same thread count. Median ms per step.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from llm_rl.rollout.sampler import GroupSampler  # noqa: E402

SETTINGS = {"top_p=1": (0, 1.0), "top_p=0.95": (0, 0.95), "top_k=50": (50, 1.0), "top_k=50,top_p=0.95": (50, 0.95)}


def _load(path: str):
    spec = importlib.util.spec_from_file_location("sampler_other", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GroupSampler


def logits_of(kind: str, rows: int, vocab: int) -> torch.Tensor:
    """"peaked": 3 likely tokens per row over a N(0, 1) bulk (a nucleus of 0.95 within them); "flat": N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(0)
    if kind == "flat":
        return torch.randn(rows, vocab, generator=g) * 0.1
    logits = torch.randn(rows, vocab, generator=g)
    likely = torch.randint(0, vocab, (rows, 3), generator=g)
    return logits.scatter_add_(-1, likely, torch.full((rows, 3), 16.0))


def step_ms(sampler_class, logits: torch.Tensor, top_k: int, top_p: float, group_size: int, steps: int) -> float:
    """Median wall ms of one decoding step (a fresh copy of the logits each step, as generate hands over)."""
    rows = logits.shape[0]
    sampler = sampler_class(list(range(rows // group_size)), group_size, temperature=0.9, top_k=top_k, top_p=top_p)
    ids = torch.zeros(rows, 1, dtype=torch.long)
    times = []
    for _ in range(steps + 1):  # the first builds the generators
        scores = logits.clone()
        start = time.perf_counter()
        sampler(ids, scores)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare", default=None, help="Path of another sampler.py to time side by side.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    samplers = {"current": GroupSampler}
    if args.compare:
        samplers = {"other": _load(args.compare), **samplers}
    results: dict = {}
    for kind in ("peaked", "flat"):
        logits = logits_of(kind, args.rows, args.vocab)
        for name, (top_k, top_p) in SETTINGS.items():
            runs = {label: [] for label in samplers}
            for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
                for label, cls in samplers.items():
                    runs[label].append(step_ms(cls, logits, top_k, top_p, args.group_size, args.steps))
            results[f"{kind} {name}"] = {label: statistics.median(v) for label, v in runs.items()}
    print(f"GroupSampler, ms per decoding step: {args.rows} rows x V={args.vocab}, {args.threads} thread(s)")
    print(f"{'logits, setting':32s}" + "".join(f"{label:>10s}" for label in samplers))
    for key, row in results.items():
        print(f"{key:32s}" + "".join(f"{row[label]:10.2f}" for label in samplers))
    return results


if __name__ == "__main__":
    main()
