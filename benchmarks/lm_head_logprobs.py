"""The fused, chunked LM-head log-probs against today's path, at Qwen2.5-0.5B's head: (32, 128) x 151,936, H = 896.

    python benchmarks/lm_head_logprobs.py                       # the issue's case, 2 threads
    python benchmarks/lm_head_logprobs.py --rows 4 --tokens 64  # a quick look

One training forward's head + backward, as GRPO's runs it (log-probs with a gradient, the
entropy as a metric), from the final hidden states `(rows, tokens, H)` and the head's weight:
- today: ``lm_head`` (a linear) -> `(B, T, V)` logits -> ``selective_log_softmax`` and
  ``entropy_from_logits`` (no grad) -> backward through the logits;
- fused: ``chunked_lm_head_logprobs(..., tokens_per_chunk, with_entropy=True)``, the entropy
  detached, for each ``--chunks`` size.
Peak: the bytes of live tensors created during forward + backward (``TensorMeter``: every
op's outputs tracked until freed, the CPU analogue of ``torch.cuda.max_memory_allocated``),
inputs and weights excluded. Time: wall and process CPU seconds of forward + backward, the
methods interleaved repeat by repeat at the same thread count, median over ``--repeats``
(measured separately from the peak, without the meter). The process's address space is
capped (``--memory_limit_gb``) so running out ends this run instead of the machine's others.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from llm_rl.core import chunked_lm_head_logprobs, entropy_from_logits, selective_log_softmax  # noqa: E402
from llm_rl.memory_measure import TensorMeter  # noqa: E402

MiB = 2**20


def today(hidden, weight, ids, temperature):
    logits = torch.nn.functional.linear(hidden, weight)  # (B, T, V)
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = selective_log_softmax(logits, ids)
    with torch.no_grad():
        entropy = entropy_from_logits(logits.detach())
    return logprobs, entropy


def fused(chunk):
    def run(hidden, weight, ids, temperature):
        logprobs, entropy = chunked_lm_head_logprobs(hidden, weight, ids, None, temperature, chunk, with_entropy=True)
        return logprobs, entropy.detach()

    return run


def forward_backward(method, hidden, weight, ids, temperature):
    logprobs, entropy = method(hidden, weight, ids, temperature)
    (logprobs.sum() + 0 * entropy.sum()).backward()
    hidden.grad = weight.grad = None


def timed(method, inputs) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    forward_backward(method, *inputs)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--chunks", default="1024,256", help="tokens_per_chunk values, comma-separated")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory_limit_gb", type=float, default=18.0)
    parser.add_argument("--json", default=None, help="Write the figures here.")
    args = parser.parse_args(argv)
    limit = int(args.memory_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.rows, args.tokens, args.hidden, generator=g).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=g) * 0.02).requires_grad_()
    ids = torch.randint(0, args.vocab, (args.rows, args.tokens), generator=g)
    inputs = (hidden, weight, ids, args.temperature)
    methods = {"today": today, **{f"fused, {c} per chunk": fused(int(c)) for c in args.chunks.split(",")}}

    # the values agree (and a warm-up for each)
    reference = today(*inputs)[0].detach()
    for name, method in methods.items():
        error = (method(*inputs)[0].detach() - reference).abs().max().item()
        print(f"{name}: max |log-prob - today's| = {error:.2e}", flush=True)

    results = {name: {} for name in methods}
    for name, method in methods.items():
        with TensorMeter() as meter:
            forward_backward(method, *inputs)
        results[name].update(peak_mb=meter.peak / MiB, largest_tensor_mb=meter.largest / MiB)
        print(f"{name}: peak {meter.peak / MiB:.0f} MiB", flush=True)
    times = {name: [] for name in methods}
    for _ in range(args.repeats):  # interleaved: each method sees the same machine load
        for name, method in methods.items():
            times[name].append(timed(method, inputs))
            print(f"{name}: {times[name][-1][0]:.2f} s wall, {times[name][-1][1]:.2f} s cpu", flush=True)
    for name in methods:
        results[name].update(wall_s=statistics.median(t[0] for t in times[name]),
                             cpu_s=statistics.median(t[1] for t in times[name]))  # fmt: skip

    base = results["today"]
    print(f"\n(rows, tokens, V) = ({args.rows}, {args.tokens}, {args.vocab}), H = {args.hidden}, fp32, "
          f"{args.threads} thread(s), forward + backward")  # fmt: skip
    print(f"{'method':24s}{'peak MiB':>10s}{'largest':>10s}{'wall s':>9s}{'cpu s':>9s}{'x today':>9s}")
    for name, r in results.items():
        print(f"{name:24s}{r['peak_mb']:10.0f}{r['largest_tensor_mb']:10.0f}{r['wall_s']:9.2f}{r['cpu_s']:9.2f}"
              f"{r['wall_s'] / base['wall_s']:9.2f}")  # fmt: skip
    if args.json:
        settings = {k: getattr(args, k) for k in ("rows", "tokens", "vocab", "hidden", "threads", "repeats", "temperature")}
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
