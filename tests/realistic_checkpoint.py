"""A checkpoint with the conditions of a real Qwen2.5-Instruct one, at a size built in seconds.

The embedded tiny model is friendly in ways hub checkpoints are not. This one is not:

- weights stored in bfloat16 (``config.json`` says ``"dtype": "bfloat16"``), as the hub ships them;
- an untied LM head (``tie_word_embeddings=False``), like Qwen2.5-3B+ and Llama;
- a vocabulary of tens of thousands of tokens, and an embedding matrix larger than the
  tokenizer (Qwen2.5: 151,936 rows for 151,665 tokens), so some ids decode to nothing;
- two EOS ids, ``generation_config.eos_token_id = [<|im_end|>, <|endoftext|>]``, with the pad
  token equal to one of them (``<|endoftext|>``), and the tokenizer's ``eos_token`` the other;
- a ``generation_config.json`` with Qwen2.5-Instruct's sampling settings and a repetition
  penalty (``repetition_penalty`` is a parameter: tests use a large one so its effect shows);
- a ChatML chat template that adds a default system prompt when the chat has none.

Only the hidden size is small, so a forward costs little despite the vocabulary.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML; a chat that does not open with a system message gets the default one (as Qwen2.5's template does).
CHATML_WITH_DEFAULT_SYSTEM = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2.5-0.5B-Instruct's generation_config.json, but for the penalty (a parameter here).
QWEN_INSTRUCT_SAMPLING = dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20)


def _corpus(num_words: int = 60_000, seed: int = 0) -> list[str]:
    """Random pseudo-words and arithmetic: enough distinct pieces for BPE to learn ~20k merges."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lines = []
    for _ in range(num_words // 10):
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(10)]
        lines.append(" ".join(words))
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"What is {a} + {b}? Answer: {a + b}")
    return lines


def build_large_vocab_tokenizer(vocab_size: int = 20_000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of about ``vocab_size`` tokens with Qwen's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,  # Qwen2.5-Instruct: eos <|im_end|>, pad <|endoftext|>
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        padding_side="right",  # as shipped; the trainers must set left padding themselves
        model_max_length=4096,
    )
    fast.chat_template = CHATML_WITH_DEFAULT_SYSTEM
    return fast


def build_qwen_like_checkpoint(
    path: str | Path,
    repetition_penalty: float = 1.05,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 20_000,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """Save the checkpoint described in the module docstring to ``path``; returns ``path``."""
    path = Path(path)
    tokenizer = build_large_vocab_tokenizer(vocab_size)
    im_end, endoftext = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = Qwen2Config(
        vocab_size=(len(tokenizer) + 255) // 256 * 256,  # padded past the tokenizer, as Qwen2.5's 151,936 rows
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # Larger than the default init (std 0.02) so the sampled distributions are far from uniform
    # and a repetition penalty or a wrong temperature moves log-probs visibly.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext,
        eos_token_id=[im_end, endoftext],
        pad_token_id=endoftext,
        repetition_penalty=repetition_penalty,
        **QWEN_INSTRUCT_SAMPLING,
    )
    model.to(torch.bfloat16).save_pretrained(path)  # safetensors in bf16; config.json records the dtype
    tokenizer.save_pretrained(path)
    return path
