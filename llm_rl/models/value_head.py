"""A policy with a scalar value head, for PPO: shared backbone (one model copy) or a separate critic.

The value of the state before completion token ``t`` is read from the hidden state at
the position that predicts token ``t`` — the same positions the log-probs come from.
The head is saved as ``value_head.safetensors`` beside the LM's own files, so
``AutoModelForCausalLM.from_pretrained(folder)`` still loads the LM alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llm_rl.models.forward import completion_logprobs, position_ids_from_mask

VALUE_HEAD_FILE = "value_head.safetensors"


class PolicyWithValue(nn.Module):
    """``forward`` returns per-completion-token ``(logprobs, entropy, values)``, each `(B, C)`."""

    def __init__(self, policy, critic=None):
        super().__init__()
        self.policy = policy
        # None: the value head reads the policy's own last hidden state. A separate critic is a
        # backbone without an LM head: a head that never reaches the loss would cost V x H trainable
        # weights and, under DDP, fail the second step (its parameters never get a gradient).
        self.critic = critic
        hidden_size = (critic or policy).config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # values start at 0: no arbitrary baseline before training
        nn.init.zeros_(self.value_head.bias)
        # the blocks FSDP shards one by one (accelerate's auto-wrap reads this, as on a transformers model)
        blocks = [getattr(m, "_no_split_modules", None) or [] for m in (policy, critic) if m is not None]
        self._no_split_modules = sorted({name for names in blocks for name in names})

    def forward(self, input_ids, attention_mask, completion_length: int, temperature: float = 1.0,
                entropy_grad: bool = False, tokens_per_chunk: int = 256):  # fmt: skip
        # log-probs straight from the LM head's input, which is also the value head's (completion_logprobs)
        logprobs, entropy, hidden = completion_logprobs(
            self.policy, input_ids, attention_mask, completion_length, temperature,
            with_entropy=True, entropy_grad=entropy_grad, output_hidden_states=self.critic is None,
            tokens_per_chunk=tokens_per_chunk,
        )
        if self.critic is not None:
            out = self.critic(  # a backbone without an LM head (loading.load_backbone)
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
            )
            hidden = out.last_hidden_state[:, -completion_length - 1 : -1, :]
        # The head runs in its own dtype (float32) even under bf16 autocast: values are regression
        # targets, and bf16 keeps only ~3 significant digits of them.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)  # (B, C)
        return logprobs, entropy, values

    def save_value_model(self, path: str | Path, state_dict: dict | None = None) -> None:
        """Head weights (and a separate critic, when there is one) beside the policy's files.

        ``state_dict``: this module's full state, when its own parameters are shards (FSDP, ZeRO-3).
        """
        path = Path(path)
        state = state_dict if state_dict is not None else self.state_dict()
        head = {k[len("value_head.") :]: v for k, v in state.items() if k.startswith("value_head.")}
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, path / VALUE_HEAD_FILE)
        if self.critic is not None:
            critic = {k[len("critic.") :]: v for k, v in state.items() if k.startswith("critic.")}
            self.critic.save_pretrained(path / "critic", state_dict=critic, safe_serialization=True)

    def load_value_head(self, path: str | Path) -> None:
        self.value_head.load_state_dict(load_file(Path(path) / VALUE_HEAD_FILE))
