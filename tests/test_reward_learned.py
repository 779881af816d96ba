"""LearnedReward: a tiny sequence-classification reward model built offline."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

from llm_rl.models.tiny import build_tokenizer
from reward_models import LearnedReward, compute_rewards, reward_name
from reward_models.learned import pad_right, reward_model_inputs

pytestmark = pytest.mark.xdist_group("test_reward_learned")  # one worker: its module-scoped fixtures are built once

# Very different lengths, so batched rows carry a lot of padding.
PROMPTS = [
    "What is 2 + 2? Answer:",
    "Hi",
    "Tom has 12 apples and buys 30 more, then gives half of them away. How many are left? Answer:",
    "x",
]
COMPLETIONS = [" 4", " there, how can I help you with your homework today? Let us think step by step about it.", " 21", ""]


def tiny_config(tok, **overrides) -> Qwen2Config:
    kwargs = dict(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, num_labels=1, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return Qwen2Config(**(kwargs | overrides))


def tiny_reward_model(tok, **overrides) -> Qwen2ForSequenceClassification:
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(tiny_config(tok, **overrides))
    # A unit-scale head spreads the scores apart, so "batched == single" is a real check, not 0 == 0.
    torch.nn.init.normal_(model.score.weight, std=1.0)
    return model


def save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def rm_path(tok, tmp_path_factory):
    return save(tiny_reward_model(tok), tok, tmp_path_factory.mktemp("rm"))


@pytest.fixture(scope="module")
def reward(rm_path):
    return LearnedReward(rm_path, device="cpu", batch_size=3, max_length=256)


def single_scores(reward, prompts, completions):
    return [reward([p], [c])[0] for p, c in zip(prompts, completions)]


def test_batched_scores_equal_single_sample_scores(reward):
    batched = reward(prompts=PROMPTS, completions=COMPLETIONS)  # batch_size=3: a full batch and a batch of one
    single = single_scores(reward, PROMPTS, COMPLETIONS)
    lengths = [len(row) for row in reward_model_inputs(reward.tokenizer, PROMPTS, COMPLETIONS, 256)]
    assert max(lengths) > 5 * min(lengths)  # very different lengths, so rows carry lots of padding
    assert torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-5)
    assert max(batched) - min(batched) > 1e-2  # the scores differ, so the comparison means something


def test_scores_are_the_model_output_at_the_last_token(reward):
    ids = reward_model_inputs(reward.tokenizer, PROMPTS[:1], COMPLETIONS[:1], 256)[0]
    with torch.no_grad():
        expected = reward.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert reward(PROMPTS[:1], COMPLETIONS[:1])[0] == pytest.approx(expected, abs=1e-6)


def test_padding_with_an_id_the_model_does_not_know_would_change_scores(reward):
    # The control for the test above: pad rows with an id != config.pad_token_id and the
    # model reads the score at a padding position, so batched scores differ from single ones.
    rows = reward_model_inputs(reward.tokenizer, PROMPTS, COMPLETIONS, 256)
    input_ids, attention_mask = pad_right(rows, reward.tokenizer.eos_token_id)
    with torch.no_grad():
        naive = reward.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    single = torch.tensor(single_scores(reward, PROMPTS, COMPLETIONS))
    assert not torch.allclose(naive, single, atol=1e-3)


def test_chat_samples_use_the_chat_template_and_stay_padding_safe(reward):
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    text = reward_model_inputs(reward.tokenizer, prompts[:1], completions[:1], 256)[0]
    assert reward.tokenizer.decode(text).startswith("<|im_start|>user\nWhat is 2 + 2?")
    batched = reward(prompts, completions)
    assert torch.allclose(torch.tensor(batched), torch.tensor(single_scores(reward, prompts, completions)), atol=1e-5)


def test_long_inputs_keep_their_last_tokens(reward):
    rows = reward_model_inputs(reward.tokenizer, ["1 2 3 4 5 6 7 8 9"], [" end"], max_length=4)
    assert len(rows[0]) == 4 and reward.tokenizer.decode(rows[0]).endswith("end")


def test_is_a_named_reward_function(reward):
    assert reward.__name__ == "reward_model" and reward_name(reward) == "reward_model"
    total, per_func = compute_rewards([reward], None, PROMPTS, COMPLETIONS, {"answer": ["4", "", "21", ""]})
    assert list(per_func) == ["reward_model"]
    assert torch.allclose(total, torch.tensor(reward(PROMPTS, COMPLETIONS)), atol=1e-6)
    assert not reward.model.training


def test_from_model_fixes_pad_token_id_and_missing_pad_token(tok):
    model = tiny_reward_model(tok, pad_token_id=None)  # a config that cannot batch on its own
    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    with pytest.warns(UserWarning, match="no pad token"):
        reward = LearnedReward.from_model(model, tokenizer, batch_size=8)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.pad_token_id
    batched = reward(PROMPTS, COMPLETIONS)
    assert torch.allclose(torch.tensor(batched), torch.tensor(single_scores(reward, PROMPTS, COMPLETIONS)), atol=1e-5)


def test_causal_lm_folder_is_refused_with_a_hint(tok, tmp_path):
    path = save(Qwen2ForCausalLM(tiny_config(tok)), tok, tmp_path / "policy")
    with pytest.raises(ValueError, match="Qwen2ForCausalLM.*not a sequence-classification reward model") as info:
        LearnedReward(path, device="cpu")
    assert "recipes/train_reward_model.py" in str(info.value)


def test_causal_lm_object_is_refused(tok):
    with pytest.raises(ValueError, match="Qwen2ForCausalLM"):
        LearnedReward.from_model(Qwen2ForCausalLM(tiny_config(tok)), tok)


def test_classifier_with_two_labels_is_refused(tok, tmp_path):
    path = save(Qwen2ForSequenceClassification(tiny_config(tok, num_labels=2)), tok, tmp_path / "classifier")
    with pytest.raises(ValueError, match="num_labels=2"):
        LearnedReward(path, device="cpu")


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no_such_reward_model"
    with pytest.raises(FileNotFoundError, match="no_such_reward_model"):
        LearnedReward(missing)


def test_folder_without_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        LearnedReward(tmp_path)
