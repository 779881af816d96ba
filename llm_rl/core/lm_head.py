"""Log-probs (and entropy) of chosen tokens straight from the LM head's input, a chunk of positions at a time.

With a 150k-token vocabulary the `(B, T, V)` logits are the largest tensors of an RL step:
the logits, their float32 copy, the softmax and the gradient each cost ``B T V`` floats.
``chunked_lm_head_logprobs`` takes the final hidden states and the head's weight instead and
never builds them: for ``tokens_per_chunk`` positions at a time it computes the chunk's
logits, their ``logsumexp`` and the chosen token's logit, then drops the chunk. Backward
recomputes each chunk's logits (one more matmul) instead of keeping them, and accumulates
the weight's gradient over the chunks. This is the fused linear + cross-entropy of Liger
Kernel (Hsu et al. 2024, arXiv 2410.10989) and of Wijmans et al. 2024 (Cut Your Losses,
arXiv 2411.09009), written with torch ops only.

Formulas, with ``z = (h W^T + b) / tau`` for one position and ``p = softmax(z)``:
    log p_i = z_i - logsumexp(z)
    H       = logsumexp(z) - sum_j p_j z_j
    d log p_i / d z = onehot(i) - p
    d H / d z       = -p * (log p + H)
and ``dL/dh = (dL/dz / tau) W``, ``dL/dW = (dL/dz / tau)^T h``, ``dL/db = sum (dL/dz / tau)``.
"""

from __future__ import annotations

import torch


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the model's own ``lm_head`` (an ``nn.Linear``) would compute in: autocast's, or the inputs'."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) in (torch.bfloat16, torch.float16):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunk_logits(h, weight, bias, temperature: float, out_dtype: torch.dtype) -> torch.Tensor:
    """``(h W^T + b) / tau`` for one chunk `(n, H)` -> `(n, V)` in ``out_dtype`` (float32 or float64)."""
    logits = torch.nn.functional.linear(h, weight, bias).to(out_dtype)  # the matmul in the head's dtype
    return logits.div_(temperature) if temperature != 1.0 else logits


class _ChunkedLMHeadLogprobs(torch.autograd.Function):
    """``(log p(ids), entropy)`` `(N,)` of ``hidden`` `(N, H)` under ``weight`` `(V, H)`, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, temperature, tokens_per_chunk, with_entropy, matmul_dtype):
        out_dtype = torch.promote_types(matmul_dtype, torch.float32)
        with torch.autocast(hidden.device.type, enabled=False):  # the casts below are explicit
            w = weight.to(matmul_dtype)  # one cast for all chunks, as autocast's weight cache does
            b = bias.to(matmul_dtype) if bias is not None else None
            n = hidden.shape[0]
            logprobs = torch.empty(n, dtype=out_dtype, device=hidden.device)
            logsumexp = torch.empty(n, dtype=out_dtype, device=hidden.device)
            entropy = torch.empty(n if with_entropy else 0, dtype=out_dtype, device=hidden.device)
            for start in range(0, n, tokens_per_chunk):
                rows = slice(start, start + tokens_per_chunk)
                z = _chunk_logits(hidden[rows].to(matmul_dtype), w, b, temperature, out_dtype)  # (n, V)
                logsumexp[rows] = torch.logsumexp(z, dim=-1)
                logprobs[rows] = z.gather(-1, ids[rows, None]).squeeze(-1) - logsumexp[rows]
                if with_entropy:
                    p = z.sub(logsumexp[rows, None]).exp_()  # softmax, (n, V)
                    entropy[rows] = logsumexp[rows] - torch.linalg.vecdot(p, z)
                del z
        ctx.save_for_backward(hidden, weight, bias, ids, logsumexp, entropy)
        ctx.temperature, ctx.tokens_per_chunk, ctx.matmul_dtype = temperature, tokens_per_chunk, matmul_dtype
        ctx.set_materialize_grads(False)  # an unused output (the entropy) gets no gradient pass
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, bias, ids, logsumexp, entropy = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        mm, chunk, tau = ctx.matmul_dtype, ctx.tokens_per_chunk, ctx.temperature
        out_dtype = logsumexp.dtype
        n = hidden.shape[0]
        if grad_logprobs is None:
            grad_logprobs = torch.zeros(n, dtype=out_dtype, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # accumulated over the chunks in float32 (at least), cast to the weight's dtype at the end
        grad_weight = torch.zeros(weight.shape, dtype=out_dtype, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(weight.shape[0], dtype=out_dtype, device=weight.device) if need_bias else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(mm)
            b = bias.to(mm) if bias is not None else None
            for start in range(0, n, chunk):
                rows = slice(start, start + chunk)
                h = hidden[rows].to(mm)  # (n, H)
                logp = _chunk_logits(h, w, b, tau, out_dtype).sub_(logsumexp[rows, None])  # recomputed, (n, V)
                g_lp = grad_logprobs[rows, None].to(out_dtype) / tau  # (n, 1); dz/dlogits = 1 / tau folded in
                if grad_entropy is None:  # d log p_i / dz = onehot(i) - p, in logp's buffer
                    grad_z = logp.exp_().mul_(-g_lp)
                else:  # ... - g_H p (log p + H), dH/dz = -p (log p + H): two (n, V) buffers
                    p = logp.exp()
                    entropy_term = logp.add_(entropy[rows, None]).mul_(p).mul_(grad_entropy[rows, None].to(out_dtype) / tau)
                    grad_z = p.mul_(-g_lp).sub_(entropy_term)
                    del entropy_term
                grad_z.scatter_add_(-1, ids[rows, None], g_lp)
                del logp
                if need_bias:
                    grad_bias += grad_z.sum(0)
                grad_z = grad_z.to(mm)  # the head's backward matmuls run in its forward dtype
                if need_hidden:
                    grad_hidden[rows] = grad_z @ w  # (n, H)
                if need_weight:
                    if grad_z.dtype == out_dtype:
                        grad_weight.addmm_(grad_z.T, h)  # (V, H), no temporary
                    else:
                        grad_weight += (grad_z.T @ h).to(out_dtype)
                del grad_z
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def chunked_lm_head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    tokens_per_chunk: int = 256,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``ids`` under the LM head, holding at most ``tokens_per_chunk x V`` logits at a time.

    Shapes: ``hidden`` `(B, T, H)` (any float dtype), ``weight`` `(V, H)`, ``bias`` `(V,)` or None,
    ``ids`` `(B, T)` int64 -> ``(logprobs (B, T), entropy (B, T) or None)``, float32 (float64
    for float64 inputs). Equal to
        z = (hidden @ weight.T + bias) / temperature
        log_softmax(z, -1).gather(-1, ids[..., None]).squeeze(-1),  -(softmax(z) * log_softmax(z)).sum(-1)
    and differentiable in ``hidden``, ``weight`` and ``bias`` (the entropy too: an entropy
    bonus gets its gradient). Under autocast the chunk's matmul runs in autocast's dtype, as
    the model's ``lm_head`` would; the softmax statistics are always float32. Backward
    recomputes each chunk's logits; tied embeddings get the head's gradient as usual.
    """
    if hidden.dim() != 3 or ids.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be (B, T, H) and ids (B, T), got {tuple(hidden.shape)} and {tuple(ids.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (V, H={hidden.shape[-1]}), got {tuple(weight.shape)}")
    if tokens_per_chunk < 1:
        raise ValueError(f"tokens_per_chunk must be >= 1, got {tokens_per_chunk}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, width, size = hidden.shape
    logprobs, entropy = _ChunkedLMHeadLogprobs.apply(
        hidden.reshape(-1, size), weight, bias, ids.reshape(-1), float(temperature), int(tokens_per_chunk),
        with_entropy, _matmul_dtype(hidden, weight),
    )  # fmt: skip
    return logprobs.view(batch, width), entropy.view(batch, width) if with_entropy else None
