"""Peak extra memory of the naive log-softmax + gather vs `selective_log_softmax`.

    python benchmarks/selective_log_softmax_memory.py            # CPU, [8, 256, 32000]
    python benchmarks/selective_log_softmax_memory.py --device cuda

Each (method, dtype, pass) runs in a fresh subprocess so earlier allocations
cannot hide or inflate a peak. "Extra" is the peak above what was resident
just before the call, logits and ids already allocated.
- CPU: Linux peak RSS. Writing "5" to /proc/self/clear_refs resets VmHWM to
  the current RSS; after the call, VmHWM - VmRSS_before is the peak extra.
  glibc is told to serve every allocation over 64 KiB with mmap, so freed
  memory goes back to the OS and a later allocation has to show up in RSS.
- CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats().
The "fwd+bwd" pass includes the `[B, T, V]` gradient of the logits, which
both methods must produce.
"""

import argparse
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from llm_rl.core import selective_log_softmax  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MiB = 2**20


def naive(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None]).squeeze(-1)


METHODS = {"naive": naive, "selective": selective_log_softmax}


def make_inputs(shape, dtype, device, seed=0):
    """Random logits filled row by row, so no full-size float32 temporary exists."""
    g = torch.Generator(device=device).manual_seed(seed)
    B, T, V = shape
    logits = torch.empty(B, T, V, dtype=dtype, device=device)
    for b in range(B):
        logits[b] = 4 * torch.randn(T, V, generator=g, device=device)
    ids = torch.randint(0, V, (B, T), generator=g, device=device)
    return logits, ids


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def worker(method: str, dtype: str, backward: bool, shape, device: str) -> None:
    """Run one call and print its peak extra memory in bytes."""
    torch.set_num_threads(1)
    logits, ids = make_inputs(shape, DTYPES[dtype], device)
    fn = METHODS[method]

    def call(logits, ids):
        if backward:
            logits.requires_grad_()
            fn(logits, ids).sum().backward()
        else:
            with torch.no_grad():
                fn(logits, ids)

    call(*make_inputs((2, 4, 64), DTYPES[dtype], device))  # warm-up: load kernels' code pages first

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call(logits, ids)
        torch.cuda.synchronize()
        print(torch.cuda.max_memory_allocated() - before)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS high-water mark (Linux >= 4.0)
        before = _proc_status_kib("VmRSS")
        call(logits, ids)
        print((_proc_status_kib("VmHWM") - before) * 1024)


def measure(method, dtype, backward, shape, device) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, dtype, str(int(backward)),
           "--device", device, "--shape", *map(str, shape)]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def max_abs_diff(dtype, shape, device) -> float:
    logits, ids = make_inputs(shape, DTYPES[dtype], device)
    with torch.no_grad():
        return (naive(logits, ids) - selective_log_softmax(logits, ids)).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=[8, 256, 32000], metavar=("B", "T", "V"))
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "DTYPE", "BACKWARD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, dtype, backward = args.worker
        worker(method, dtype, backward == "1", args.shape, args.device)
        return

    B, T, V = args.shape
    print(f"logits [{B}, {T}, {V}] on {args.device}; peak extra memory in MiB (fresh process each)")
    print(f"{'dtype':<9} {'logits':>7} {'pass':<8} {'naive':>8} {'selective':>10} {'saving':>7} {'max |diff|':>11}")
    for dtype in DTYPES:
        logits_mib = B * T * V * DTYPES[dtype].itemsize / MiB
        diff = max_abs_diff(dtype, args.shape, args.device)
        for backward in (False, True):
            naive_mib, ours_mib = (measure(m, dtype, backward, args.shape, args.device) / MiB for m in METHODS)
            saving = f"{naive_mib / ours_mib:.1f}x" if ours_mib >= 1 else "n/a"  # below 1 MiB is noise
            print(f"{dtype:<9} {logits_mib:>7.0f} {'fwd+bwd' if backward else 'fwd':<8} {naive_mib:>8.1f} "
                  f"{ours_mib:>10.1f} {saving:>7} {diff:>11.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
