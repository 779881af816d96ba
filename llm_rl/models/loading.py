"""Loading a policy, its tokenizer and a frozen reference, from a name, a path or an object."""

from __future__ import annotations

import copy
import os
import warnings

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from llm_rl.errors import ModelLoadError, ModelNotFoundError

DEFAULT_MODEL = "tiny"  # the embedded offline model, built on first use by llm_rl.models.tiny


def resolve_model_path(name_or_path: str) -> str:
    """``"tiny"`` means the embedded model (built and cached on first use); anything else is passed on."""
    if name_or_path == DEFAULT_MODEL:
        from llm_rl.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    looks_local = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", os.sep, 1)
    if looks_local and not os.path.exists(os.path.expanduser(name_or_path)) and name_or_path.count("/") != 1:
        raise ModelNotFoundError(
            f"Model path {name_or_path!r} does not exist. Pass a folder saved with save_pretrained, "
            f"a hub name such as 'Qwen/Qwen2.5-0.5B-Instruct' (needs network or a local cache), or 'tiny'."
        )
    return name_or_path


def _load_error(what: str, name_or_path) -> ModelLoadError:
    """One paragraph for a model or tokenizer that could not be loaded, instead of the hub client's traceback."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")
    hint = " The hub is unreachable (HF_HUB_OFFLINE is set) and it is not in the local cache." if offline else ""
    return ModelLoadError(
        f"Could not load {what} from {name_or_path!r}.{hint} Pass a local folder saved with save_pretrained, "
        f"a hub name already in the local cache, or 'tiny' for the embedded model."
    )


def use_eos_for_padding(tokenizer, name: str = "the tokenizer"):
    """``tokenizer`` with a pad token: its EOS, with a warning, when it has none (as TRL does)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{name} has neither a pad token nor an EOS token; set tokenizer.pad_token before training.")
        warnings.warn(f"{name} has no pad token; using its EOS token {tokenizer.eos_token!r} for padding", stacklevel=2)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise _load_error("a tokenizer", name_or_path) from err
    use_eos_for_padding(tokenizer, f"tokenizer of {name_or_path!r}")
    tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
    return tokenizer


def torch_dtype(name: str) -> torch.dtype | str:
    """``"float32"`` -> ``torch.float32``; ``"auto"`` stays ``"auto"`` (the checkpoint's own dtype)."""
    return name if name == "auto" else getattr(torch, name)


def load_causal_lm(model, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
    """A causal LM from a name or folder (an object is passed through), its weights in ``dtype``.

    ``dtype`` is explicit because transformers 5 reads ``dtype=None`` as ``"auto"``: a bf16
    checkpoint would load, and be trained, in bf16.
    """
    if isinstance(model, PreTrainedModel):
        return model
    try:
        return AutoModelForCausalLM.from_pretrained(model, trust_remote_code=trust_remote_code, dtype=torch_dtype(dtype))
    except OSError as err:
        raise _load_error("a causal LM", model) from err


def load_backbone(model, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
    """The transformer without its LM head (``AutoModel``): the body of a separate critic.

    A folder of a causal LM or of a sequence-classification reward model both load this way
    (their heads are left out); a model object gives its ``base_model``.
    """
    if isinstance(model, PreTrainedModel):
        return model.base_model
    try:
        return AutoModel.from_pretrained(model, trust_remote_code=trust_remote_code, dtype=torch_dtype(dtype))
    except OSError as err:
        raise _load_error("a critic backbone", model) from err


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """An independent, frozen, eval-mode copy of ``model`` (the reference policy)."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()
