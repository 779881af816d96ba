"""Memory-aware log-probabilities and entropy from logits.

With a vocabulary of 32k-150k, `log_softmax(logits.float())` of a `(B, T, V)`
batch is often the largest tensor in an RL step. These helpers give the same
numbers while holding at most one row's float32 copy at a time.

Sources: TRL `trl/trainer/utils.py` (`selective_log_softmax`,
`entropy_from_logits`); identity `log_softmax(x)_i = x_i - logsumexp(x)`.
"""

import torch


class _HalfSelectiveLogSoftmax(torch.autograd.Function):
    """`log_softmax(logits.float()).gather(ids)` for bf16/fp16 logits, one row at a time.

    Forward upcasts one `(T, V)` row at a time; backward recomputes that row's
    softmax instead of keeping a float32 copy of all logits alive for autograd:
        d logp_i / d x_j = 1[j == i] - softmax(x)_j
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logsumexp = torch.empty(ids.shape, dtype=torch.float32, device=logits.device)  # (B, T)
        selected = logits.gather(-1, ids[..., None]).squeeze(-1).float()  # (B, T), exact cast
        for b in range(logits.shape[0]):  # one (T, V) float32 row alive at a time
            logsumexp[b] = torch.logsumexp(logits[b].float(), dim=-1)
        ctx.save_for_backward(logits, ids, logsumexp)
        return selected - logsumexp  # (B, T) float32

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, ids, logsumexp = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)  # (B, T, V) in the logits dtype
        for b in range(logits.shape[0]):
            grad_row = (logits[b].float() - logsumexp[b, :, None]).exp_()  # softmax, (T, V)
            grad_row.mul_(-grad_out[b, :, None])  # -g * softmax_j
            grad_row.scatter_add_(-1, ids[b, :, None], grad_out[b, :, None].float())  # + g at j == i
            grad_logits[b] = grad_row
        return grad_logits, None


def selective_log_softmax(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of `ids` under `logits`, without a full `(B, T, V)` log-softmax.

    Shapes: `logits` `(B, T, V)`, `ids` `(B, T)` int64 -> `(B, T)`, float32 for
    bf16/fp16 logits, else the logits dtype.
    Formula: `log_softmax(x)_i = x_i - logsumexp(x)`; equals
    `log_softmax(logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)`.
    - float32/float64: `gather - logsumexp`, with logsumexp taken row by row
      so its temporaries are `(T, V)`, not `(B, T, V)`.
    - bf16/fp16: upcast and reduce one row at a time (logsumexp in half
      precision is too coarse), with a custom backward that recomputes each
      row rather than saving float32 copies.
    Differentiable with respect to `logits`.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        return _HalfSelectiveLogSoftmax.apply(logits, ids)
    selected = logits.gather(-1, ids[..., None]).squeeze(-1)  # (B, T)
    # Equivalent to torch.logsumexp(logits, -1), with row-sized temporaries.
    logsumexp = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # (B, T)
    return selected - logsumexp


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """Entropy of the categorical distribution at each position.

    Shapes: `logits` `(..., V)` -> `(...)`, float32 for bf16/fp16 logits.
    Formula: `H = -sum_j p_j log p_j = logsumexp(x) - sum_j p_j x_j`, computed
    in float32 over `chunk_size` rows of the flattened `(N, V)` logits at a time.
    Differentiable; note that autograd then keeps each chunk's softmax, so the
    memory saving is for the no-grad (logging) case.
    """
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    entropies = []
    for chunk in flat.split(chunk_size):  # (<=chunk_size, V)
        chunk = chunk.to(compute_dtype)
        probs = torch.softmax(chunk, dim=-1)
        entropies.append(torch.logsumexp(chunk, dim=-1) - (probs * chunk).sum(-1))
    if not entropies:  # no positions at all
        return logits.new_zeros(logits.shape[:-1], dtype=compute_dtype)
    return torch.cat(entropies).view(logits.shape[:-1])
