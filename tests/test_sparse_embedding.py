"""The input embedding's sparse gradient: the same gradient, one (vocabulary, hidden) tensor less at the end of backward."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from llm_rl.core import chunked_lm_head_logprobs
from llm_rl.memory import ModelShape, StepShape, predict_memory
from llm_rl.memory_measure import TensorMeter
from llm_rl.models.embedding import use_sparse_embedding_gradient

V, H = 20_000, 32


def _model(tied: bool):
    config = Qwen2Config(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).train()


def _backward(model, ids):
    """A fused-head log-prob loss, as the trainers' update computes it; returns the meter of forward + backward."""
    with TensorMeter() as meter:
        hidden = model.model(ids).last_hidden_state
        logprobs, _ = chunked_lm_head_logprobs(hidden[:, :-1], model.lm_head.weight, ids[:, 1:], tokens_per_chunk=8)
        logprobs.mean().backward()
    return meter


@pytest.mark.parametrize("tied", [True, False])
def test_sparse_embedding_gradient_equals_the_dense_one_and_stays_dense(tied):
    dense, sparse = _model(tied), _model(tied)
    assert use_sparse_embedding_gradient(sparse) and not use_sparse_embedding_gradient(sparse)  # once
    ids = torch.tensor([[5, 9, 9, 17, 5, 3], [2, 9, 4, 4, 4, 8]])  # repeated tokens: rows summed
    for _ in range(2):  # a second micro-batch accumulates into the held gradient
        _backward(dense, ids)
        _backward(sparse, ids)
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        assert b.grad.layout == torch.strided, name  # clipping, AdamW and checkpoints see a dense gradient
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)  # rows of repeated tokens: summed in another order


def test_tied_embedding_backward_holds_one_vocabulary_sized_gradient_less():
    dense, sparse = _model(True), _model(True)
    use_sparse_embedding_gradient(sparse)
    ids = torch.randint(0, V, (2, 12))
    saved = _backward(dense, ids).peak - _backward(sparse, ids).peak
    assert 0.99 * V * H * 4 < saved <= V * H * 4  # the embedding's dense (V, H) float32 gradient, less the sparse one's rows


def test_frozen_or_absent_embedding_is_left_alone():
    model = _model(True)
    model.requires_grad_(False)
    assert not use_sparse_embedding_gradient(model)
    assert not use_sparse_embedding_gradient(torch.nn.Linear(3, 3))


def test_predictor_counts_the_dense_embedding_gradient_at_the_end_of_backward():
    # a step whose update peaks at the end of backward: every gradient (+ the embedding's dense one while the
    # tied head's is held, 5,000 x 256 floats) outweighs the few saved activations
    m = ModelShape(vocab_size=5000, hidden_size=256, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=64,
                   intermediate_size=512)  # fmt: skip
    step = StepShape("grpo", prompts=1, num_generations=2, prompt_length=2, completion_length=1, logprob_chunk_size=1)
    sparse = predict_memory(m, step)
    dense = predict_memory(m, StepShape(**{**step.__dict__, "sparse_embedding_grad": False}))
    assert sparse.phases["update"] == sparse.components["gradients"]
    assert dense.phases["update"] - sparse.phases["update"] == 5000 * 256 * 4
