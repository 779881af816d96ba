"""A learned reward model used as a reward function.

The reward of (prompt, completion) is the single output of a sequence-classification
transformer read at the last non-padding token: the reward model of InstructGPT
(Ouyang et al. 2022, arXiv 2203.02155) as trained by TRL's ``RewardTrainer`` or by
``recipes/train_reward_model.py``.

The reward model has its own tokenizer, usually not the policy's, so it re-tokenises
*text*: prompt + completion for plain strings; for chat samples, the reward model's
chat template (or the joined message contents if it has none).

Padding safety: ``*ForSequenceClassification`` models find "the last real token" as the
last one that is not ``config.pad_token_id`` (``transformers.modeling_layers.
GenericForSequenceClassification``). Rows are padded on the right with exactly that id,
so causal attention never sees the padding and a sample scores the same alone or in a
batch of any lengths.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from reward_models._text import is_conversation, message_text
from reward_models.combine import RewardError, RewardModelNotFoundError

TRAIN_HINT = (
    "Train one with `python recipes/train_reward_model.py` "
    "(it saves an AutoModelForSequenceClassification with num_labels=1)."
)


def _as_messages(sample, role: str) -> list[dict]:
    if isinstance(sample, str):
        return [{"role": role, "content": sample}]
    return [sample] if isinstance(sample, dict) else list(sample)


def render_sample(tokenizer, prompt, completion) -> tuple[str, bool]:
    """The text the reward model reads, and whether it already holds the special tokens.

    Plain strings are concatenated (a completion continues its prompt); chat samples go
    through the tokenizer's chat template, which adds its own special tokens.
    """
    if not (is_conversation(prompt) or is_conversation(completion)):
        return prompt + completion, False
    messages = _as_messages(prompt, "user") + _as_messages(completion, "assistant")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False), True
    return "\n".join(message_text(m) for m in messages), False


def reward_model_inputs(tokenizer, prompts: Sequence, completions: Sequence, max_length: int) -> list[list[int]]:
    """Token ids of each (prompt, completion), keeping the *last* ``max_length`` tokens.

    Truncating on the left keeps the end of the completion, where the score is read.
    Use this when training a reward model too, so it is scored on the inputs it saw.
    """
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text, has_special_tokens = render_sample(tokenizer, prompt, completion)
        ids = tokenizer(text, add_special_tokens=not has_special_tokens)["input_ids"]
        rows.append(ids[-max_length:])
    return rows


def pad_right(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both (B, T) with T the longest row, padded on the right."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def _check_path(name_or_path: str) -> None:
    """Fail early, naming the path, for a local folder that is missing or is not a model."""
    if os.path.isdir(name_or_path):
        if not os.path.isfile(os.path.join(name_or_path, "config.json")):
            raise RewardModelNotFoundError(
                f"Reward model folder {name_or_path!r} holds no config.json, so it is not a saved model. {TRAIN_HINT}"
            )
        return
    # Hub ids are "name" or "org/name"; anything else that does not exist is a missing folder.
    looks_local = (
        os.path.isabs(name_or_path) or name_or_path.startswith((".", "~"))
        or name_or_path.count("/") > 1 or "\\" in name_or_path
    )
    if looks_local or os.path.exists(name_or_path):
        raise RewardModelNotFoundError(
            f"No reward model folder at {name_or_path!r}: the path does not exist or is not a folder. "
            f"Pass the folder a reward model was saved to. {TRAIN_HINT}"
        )


def check_reward_config(config, source: str, model_class: str | None = None) -> None:
    """A reward model is a sequence-classification model with one output (``num_labels == 1``).

    The architecture is read from ``config.architectures`` (set by ``save_pretrained``),
    else from ``model_class``, the class name of an already-built model.
    """
    architectures = getattr(config, "architectures", None) or ([model_class] if model_class else [])
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise RewardError(
            f"{source} is a {', '.join(architectures)}, not a sequence-classification reward model: it has no trained "
            f"scalar score head (loading it as one would attach a random head), so its rewards would be meaningless. "
            f"Pass a reward model instead. {TRAIN_HINT}"
        )
    if config.num_labels != 1:
        raise RewardError(
            f"{source} has num_labels={config.num_labels}, but a reward model outputs one scalar per sample (num_labels=1). "
            f"A classifier with several labels is not a reward model. {TRAIN_HINT}"
        )


class LearnedReward:
    """A sequence-classification reward model as a reward function ``f(prompts, completions) -> list[float]``.

    Args:
        name_or_path: a folder saved with ``save_pretrained`` (model + tokenizer), or a hub id available offline.
        device: where to run it; default CUDA if available, else CPU.
        batch_size: samples per forward pass.
        max_length: tokens kept per sample (the last ones, see ``reward_model_inputs``).
        trust_remote_code, torch_dtype: passed to ``from_pretrained`` (``torch_dtype`` as ``dtype``).
    """

    __name__ = "reward_model"  # the name the reward is logged under (see combine.reward_name)

    def __init__(
        self,
        name_or_path,
        device=None,
        batch_size: int = 32,
        max_length: int = 1024,
        trust_remote_code: bool = False,
        torch_dtype=None,
    ):
        name_or_path = os.fspath(name_or_path)
        _check_path(name_or_path)
        try:
            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except OSError as error:
            message = f"Could not load a reward model config from {name_or_path!r} ({error}). {TRAIN_HINT}"
            raise RewardModelNotFoundError(message) from error
        check_reward_config(config, repr(name_or_path))  # before loading: a causal LM would load "fine" with a random head
        model, loading_info = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code, output_loading_info=True
        )
        if loading_info["missing_keys"]:
            missing = sorted(loading_info["missing_keys"])
            raise RewardError(
                f"{name_or_path!r} lacks weights {missing}: they would be random, and so would the rewards. {TRAIN_HINT}"
            )
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._setup(model.to(device), tokenizer, batch_size, max_length)

    @classmethod
    def from_model(cls, model, tokenizer, batch_size: int = 32, max_length: int = 1024) -> LearnedReward:
        """Wrap an already-loaded sequence-classification ``model`` and its ``tokenizer``; it stays on its device."""
        reward = cls.__new__(cls)
        reward._setup(model, tokenizer, batch_size, max_length)
        return reward

    def _setup(self, model, tokenizer, batch_size: int, max_length: int) -> None:
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size} and {max_length}")
        check_reward_config(model.config, "The given model", model_class=type(model).__name__)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("The reward model's tokenizer has neither a pad nor an eos token; set tokenizer.pad_token.")
            warnings.warn("The reward model's tokenizer has no pad token; using its eos token for padding.", stacklevel=3)
            tokenizer.pad_token = tokenizer.eos_token
        # The model locates each row's last real token as the last id != config.pad_token_id,
        # so it must be the id the rows are padded with, or batched scores would differ.
        model.config.pad_token_id = tokenizer.pad_token_id
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def score_ids(self, rows: list[list[int]]) -> list[float]:
        """Scores of token-id rows of any lengths, ``batch_size`` rows per forward pass."""
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            input_ids, attention_mask = pad_right(rows[start : start + self.batch_size], self.tokenizer.pad_token_id)
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits  # (B, 1)
            scores += logits[:, 0].float().tolist()
        return scores

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        return self.score_ids(reward_model_inputs(self.tokenizer, prompts, completions, self.max_length))
