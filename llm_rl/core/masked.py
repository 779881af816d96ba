"""Statistics over the valid (unmasked) entries of a tensor.

RL batches are padded: `mask` is 1 on completion tokens and 0 on padding.
Every helper here ignores padding entirely, even if padding holds NaN or inf
(we select with `torch.where` rather than multiply by the mask, since
`nan * 0 == nan`). Masks may be bool, int or float 0/1 tensors.

Sources: TRL `trl/core.py` (`masked_mean`, `masked_var`, `masked_whiten`),
CleanRL `ppo.py` (explained variance).
"""

import torch


def _valid(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `x` with padding replaced by 0, and the mask as x's dtype."""
    keep = mask.bool()
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)), keep.to(x.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over entries where `mask` is 1.

    Shapes: `x` and `mask` broadcastable, e.g. `(B, T)`. With `dim=None` the
    result is 0-dim; otherwise `dim` is reduced, e.g. `(B, T), dim=-1 -> (B,)`.

    Formula: `sum(x * mask) / sum(mask)`. A fully masked tensor (or row, with
    `dim`) gives 0 instead of NaN, so empty rows never poison a loss.
    """
    x, m = _valid(x, mask)
    total = x.sum() if dim is None else x.sum(dim)
    count = m.expand_as(x).sum() if dim is None else m.expand_as(x).sum(dim)
    return total / count.clamp_min(1)  # count is 0 only where total is 0 too


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of `x`, as a 0-dim tensor.

    Formula: `sum(mask * (x - mean)**2) / (n - 1)` with `n = sum(mask)`
    (Bessel-corrected, like `torch.var`); `unbiased=False` divides by `n`.
    Fewer than 2 valid entries (or none) gives 0 rather than NaN.
    """
    centered = x - masked_mean(x, mask)
    sq, m = _valid(centered**2, mask)
    n = m.expand_as(sq).sum()
    denom = n - 1 if unbiased else n
    return sq.sum() / denom.clamp_min(1)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    mean_var: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Normalise the valid entries of `x` to unit variance (and zero mean).

    Shapes: `x`, `mask` `(B, T)` -> `(B, T)`.
    Formula: `(x - mean) / sqrt(var + eps)` with the masked, Bessel-corrected
    `var`; with `shift_mean=False` the mean is added back (scale only, as TRL
    does for rewards). Output is 0 where `mask` is 0. `mean_var` passes
    statistics computed elsewhere, e.g. over every data-parallel shard.
    """
    mean, var = mean_var if mean_var is not None else (masked_mean(x, mask), masked_var(x, mask))
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _valid(whitened, mask)[0]


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How much of the variance of the returns the value head explains.

    Shapes: `values`, `returns`, `mask` `(B, T)` -> 0-dim float tensor.
    Formula: `1 - Var[R - V] / Var[R]` over valid tokens. 1 is perfect, 0 is
    no better than predicting the mean, negative is worse. NaN when `Var[R]`
    is 0 (undefined), as in CleanRL `ppo.py`.
    """
    var_returns = masked_var(returns, mask)
    ratio = masked_var(returns - values, mask) / var_returns  # x / 0 -> inf or NaN
    # torch.where instead of `if var_returns == 0` avoids a GPU sync.
    return torch.where(var_returns == 0, torch.full_like(ratio, float("nan")), 1 - ratio)
