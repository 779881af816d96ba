"""The input embedding's gradient as a sparse tensor, added into the dense gradient in place.

An ``nn.Embedding``'s backward builds a dense ``(vocabulary, hidden)`` gradient, zero but for the
rows of the batch's tokens. With tied embeddings the LM head's (dense) gradient of the same
weight is already held by then, so the end of backward holds two such tensors: at
Qwen2.5-0.5B's shape (151,936 x 896, float32) 545 MB more than the gradients themselves,
as much as the LM head's whole gradient. With ``sparse=True`` the embedding's backward returns
only the used rows (tokens x hidden); autograd adds it into the dense gradient in place
(``AccumulateGrad``: dense += sparse). When the embedding's gradient arrives first (an untied
head), a hook turns it dense, so the optimizer, clipping and checkpoints always see a dense
gradient. Values are the same up to the order of the float additions.
"""

from __future__ import annotations

import torch
from torch import nn


def _densify(param: torch.Tensor) -> None:
    if param.grad is not None and param.grad.is_sparse:
        param.grad = param.grad.to_dense()


def use_sparse_embedding_gradient(model: nn.Module) -> bool:
    """Switch ``model``'s trained input embedding to sparse gradients (in place); False if it has none to switch.

    One process only: DDP, FSDP and DeepSpeed reduce dense gradients, and DDP reads ``sparse`` to
    decide what it expects, so the trainers call this only when the policy is not distributed.
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embedding, nn.Embedding) or not embedding.weight.requires_grad or embedding.sparse:
        return False
    embedding.sparse = True
    embedding.weight.register_post_accumulate_grad_hook(_densify)
    return True
