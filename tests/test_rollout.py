import torch

from llm_rl.models.forward import completion_logprobs
from llm_rl.rollout import completion_mask_from_ids, generate_rollout


def _prompts():
    return ["What is 3 + 4? Answer:", "What is 12 * 2? Answer:", "What is 9 - 9? Answer:"]


def test_completion_mask_stops_after_first_eos_and_flags_truncation():
    eos = 7
    ids = torch.tensor([[5, 7, 5, 7], [7, 1, 1, 1], [1, 2, 3, 4]])
    mask, truncated = completion_mask_from_ids(ids, [eos])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


def test_rollout_shapes_masks_and_sampling_logprobs_match_a_forward(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rollout = generate_rollout(model, tok, _prompts(), seeds=[1, 2, 3], num_generations=4, max_completion_length=6)
    assert rollout.completion_ids.shape[0] == 12 and rollout.prompt_ids.shape[0] == 12
    assert rollout.completion_ids.shape[1] <= 6
    width = rollout.completion_ids.shape[1]
    logprobs, _, _ = completion_logprobs(model, rollout.input_ids, rollout.attention_mask, width)
    mask = rollout.completion_mask.bool()
    assert torch.allclose(logprobs[mask], rollout.sampling_logprobs[mask], atol=1e-4)
    # padding after EOS is the pad token and has no log-prob
    assert (rollout.completion_ids[~mask] == tok.pad_token_id).all()
    assert (rollout.sampling_logprobs[~mask] == 0).all()


def test_a_prompts_samples_do_not_depend_on_its_batch(tiny_model_dir):
    """Per-prompt seeds: the same prompt and seed give the same group alone or in a batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    together = generate_rollout(model, tok, _prompts(), seeds=[10, 11, 12], num_generations=4, max_completion_length=6)
    alone = generate_rollout(model, tok, _prompts()[1:2], seeds=[11], num_generations=4, max_completion_length=6)
    width = alone.completion_ids.shape[1]
    assert torch.equal(alone.completion_ids, together.completion_ids[4:8, :width])
    other_seed = generate_rollout(model, tok, _prompts()[1:2], seeds=[99], num_generations=4, max_completion_length=6)
    texts = lambda r: tok.batch_decode(r.completion_ids, skip_special_tokens=True)  # noqa: E731
    assert texts(other_seed) != texts(alone)  # a random 512-token model: equal samples are ~impossible


def test_min_completion_length_forbids_early_eos(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rollout = generate_rollout(
        model, tok, _prompts(), seeds=[1, 2, 3], num_generations=2, max_completion_length=5, min_completion_length=5
    )
    assert (rollout.completion_lengths() == 5).all()
