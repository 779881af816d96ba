"""The machine's measured matmul FLOP/s, and the update phase's achieved share of it.

    python benchmarks/flops.py                 # matmul FLOP/s at this machine's thread count
    python benchmarks/flops.py --threads 1

The physical limit of a training step on this device is its dense matmul rate: a
square float32 ``torch.mm`` (2 n^3 FLOPs) at the thread count the benchmarks use, best
of several timed repeats. A training update costs about ``6 x parameters x tokens``
FLOPs (2 for the forward, 4 for the backward; Kaplan et al. 2020, arXiv 2001.08361,
section 2.1), so ``update_flops / update_seconds / peak`` is the fraction of the
machine an update uses. It ignores attention's own FLOPs (small at these lengths) and
counts the tied embedding once, as the LM head.
"""

from __future__ import annotations

import argparse
import time

import torch


def matmul_flops(n: int = 1024, repeats: int = 5, min_seconds: float = 0.2, dtype=torch.float32, device="cpu",
                 timer=time.perf_counter) -> float:
    """Best sustained FLOP/s of ``n x n @ n x n`` products over ``repeats`` timed runs.

    ``timer``: ``time.perf_counter`` (wall) or ``time.process_time`` (CPU time, at one
    thread the rate the core gives when it is not shared).
    """
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)  # warm-up: thread pool and kernels
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, timer()
        while True:
            torch.mm(a, b)
            calls += 1
            if device != "cpu":
                torch.cuda.synchronize()
            elapsed = timer() - start
            if elapsed >= min_seconds:
                break
        best = max(best, 2 * n**3 * calls / elapsed)
    return best


def update_flops(parameters: int, tokens: float) -> float:
    """Model FLOPs of one forward + backward over ``tokens`` tokens: ``6 x parameters x tokens``."""
    return 6.0 * parameters * tokens


def format_flops(value: float) -> str:
    return f"{value / 1e9:.1f} GFLOP/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--n", type=int, default=1024, help="matrix side")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = matmul_flops(args.n, device=device)
    print(f"float32 matmul {args.n}x{args.n} on {device}, {torch.get_num_threads()} threads: {format_flops(peak)}")


if __name__ == "__main__":
    main()
