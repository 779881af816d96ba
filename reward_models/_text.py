"""Turning prompts and completions into plain text, whichever of TRL's two formats they use.

TRL passes reward functions either *standard* samples (plain strings) or
*conversational* ones (lists of ``{"role": ..., "content": ...}`` messages; a
completion is then ``[{"role": "assistant", "content": "..."}]``). See
https://huggingface.co/docs/trl/dataset_formats. Every reward here reads text through
these helpers so it accepts both.
"""

from __future__ import annotations

from typing import Any


def is_conversation(sample: Any) -> bool:
    """True for a chat sample: a list (or tuple) of message dicts, or a single message dict."""
    if isinstance(sample, dict):
        return "content" in sample
    return isinstance(sample, (list, tuple)) and all(isinstance(m, dict) for m in sample)


def message_text(message: dict) -> str:
    """The text of one message; multimodal content (a list of parts) keeps its text parts only."""
    content = message.get("content", "")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # OpenAI/TRL multimodal form: [{"type": "text", "text": "..."}, {"type": "image", ...}]
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def completion_text(completion: Any) -> str:
    """The text of a completion (or prompt): a string as is, a chat list as its joined contents.

    >>> completion_text("#### 18")
    '#### 18'
    >>> completion_text([{"role": "assistant", "content": "#### 18"}])
    '#### 18'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict) and "content" in completion:
        return message_text(completion)
    if is_conversation(completion):
        return "\n".join(message_text(m) for m in completion)
    raise TypeError(
        f"expected a completion as a string or a list of chat messages "
        f'[{{"role": "assistant", "content": "..."}}], got {type(completion).__name__}: {completion!r:.80}'
    )


def preview(sample: Any, limit: int = 80) -> str:
    """A short, quoted, one-line view of a prompt or completion for error messages."""
    try:
        text = completion_text(sample)
    except TypeError:
        text = repr(sample)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(text)
