"""Prompt datasets for RL: load them from anywhere, check them once, render them for a model.

A prompt dataset is a ``datasets.Dataset`` with a ``prompt`` column; every other column
(``answer``, ``solution``, ...) is passed to the reward functions by name, as in TRL
(https://huggingface.co/docs/trl/dataset_formats). A prompt is either *standard*, a
plain string, or *conversational*, a chat: a list of ``{"role": str, "content": str}``
messages, rendered through the tokenizer's chat template.

``load_prompts`` accepts a ``Dataset``, a Hub name or a local ``.jsonl``/``.json``/
``.csv``/``.parquet`` file (or a folder of them), and checks the data before any model is
loaded: a bad row, a missing column or an over-long prompt fails in a second with a
``PromptDataError`` saying what to change, not an hour into training.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, load_dataset
from datasets.exceptions import DatasetNotFoundError, DatasetsError

from llm_rl.errors import UserError

# Local file suffix -> the datasets builder that reads it.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Suffixes that say "this is a local file" even though we cannot read them.
OTHER_DATA_SUFFIXES = {".txt", ".tsv", ".arrow", ".xlsx", ".xls", ".gz", ".zip", ".tar"}
# File stems that name a split, so a folder of them is not silently read as one split.
SPLIT_NAMES = {"train", "test", "validation", "valid", "dev", "eval"}
# Reward functions are called as f(prompts=..., completions=..., **columns): these
# column names would collide with the keywords.
RESERVED_COLUMNS = ("prompts", "completions")
LONG_PROMPT_MODES = ("error", "filter")
_HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")  # "owner/name"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class PromptDataError(UserError, ValueError):
    """A prompt dataset that cannot be used; the message says what is wrong and what to do."""


def is_chat(prompt: Any) -> bool:
    """True for a well-formed chat: a non-empty list of ``{"role": str, "content": str}`` dicts."""
    return (
        isinstance(prompt, (list, tuple))
        and len(prompt) > 0
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        )
    )


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The text a model is prompted with: a string as is, a chat through the chat template."""
    if isinstance(prompt, str):
        return prompt
    if not is_chat(prompt):
        raise PromptDataError(_bad_prompt_message(prompt))
    if not getattr(tokenizer, "chat_template", None):
        raise PromptDataError(_NO_TEMPLATE_MESSAGE)
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def load_prompts(
    source: str | Dataset | DatasetDict,
    split: str = "train",
    prompt_column: str = "prompt",
    name: str | None = None,
    tokenizer=None,
    max_prompt_length: int | None = None,
    long_prompts: Literal["error", "filter"] = "error",
    data_files: str | list[str] | None = None,
) -> Dataset:
    """A checked prompt dataset: ``prompt`` column plus every other column of ``source``.

    ``source``: a ``Dataset`` (used as is; a ``DatasetDict`` gives its ``split``), a Hub
    name (``load_dataset(source, name, split=split)``), or a local file or folder (see
    ``load_source``). ``prompt_column`` is renamed to ``prompt``. With a ``tokenizer``,
    chat prompts need a chat template; with ``max_prompt_length`` too, prompts longer than
    that many tokens either raise (``long_prompts="error"``) or are dropped with a
    warning (``"filter"``). Lengths count the rendered prompt tokenised without extra
    special tokens (a chat template already adds its own).
    """
    if long_prompts not in LONG_PROMPT_MODES:
        raise PromptDataError(f"long_prompts must be one of {LONG_PROMPT_MODES}, got {long_prompts!r}.")
    if max_prompt_length is not None and tokenizer is None:
        raise PromptDataError("max_prompt_length needs a tokenizer to count prompt tokens; pass tokenizer=...")

    dataset = load_source(source, split=split, name=name, data_files=data_files)
    where = _describe(source)
    if len(dataset) == 0:
        raise PromptDataError(f"The dataset {where} (split {split!r}) has no rows. Point at a file or split that holds prompts.")
    dataset = _select_prompt_column(dataset, prompt_column, where)

    has_chat = _check_prompt_types(dataset["prompt"])
    if has_chat and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise PromptDataError(_NO_TEMPLATE_MESSAGE)
    if max_prompt_length is not None:
        dataset = _limit_prompt_length(dataset, tokenizer, max_prompt_length, long_prompts)
    return dataset


def load_source(
    source: str | Dataset | DatasetDict,
    split: str = "train",
    name: str | None = None,
    data_files: str | list[str] | None = None,
) -> Dataset:
    """The raw rows of ``source``, whatever their columns.

    A local file is one split, so ``split`` is ignored for it. In a local folder, the
    files named after ``split`` (``train.jsonl``, ``train-00000-of-00001.parquet``) are
    read if there are any, otherwise all of its data files. With ``data_files``,
    ``source`` is passed to ``load_dataset`` with them (a Hub name, or a builder name
    such as ``"json"``).
    """
    if isinstance(source, DatasetDict):
        if split not in source:
            raise PromptDataError(f"The DatasetDict has no split {split!r}; its splits are {sorted(source)}.")
        return source[split]
    if isinstance(source, Dataset):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise PromptDataError(f"A prompt source must be a Dataset, a Hub name or a file path, got {type(source).__name__}.")
    source = os.fspath(source)
    if data_files is not None:
        return _load_hub(source, name, split, data_files)
    path = Path(source).expanduser()
    if path.exists():
        return _load_local(path, split)
    if _looks_local(source):
        raise PromptDataError(
            f"The prompt file {source!r} does not exist (looked for {path.resolve()}). Check the path, "
            f"or pass a Hub dataset name such as 'openai/gsm8k'."
        )
    return _load_hub(source, name, split, None)


# --- loading ------------------------------------------------------------------------


def _looks_local(source: str) -> bool:
    suffix = Path(source).suffix.lower()
    if source.startswith((".", "/", "~")) or suffix in FILE_BUILDERS or suffix in OTHER_DATA_SUFFIXES:
        return True
    return os.sep in source and not _HUB_NAME.match(source)


def _data_files_in(folder: Path, split: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FILE_BUILDERS)
    if not files:
        raise PromptDataError(
            f"The folder {folder} holds no {'/'.join(FILE_BUILDERS)} file. Point at a folder of "
            f"prompt files, or at one file."
        )
    of_split = [p for p in files if p.stem == split or p.stem.startswith(f"{split}-")]
    if of_split:
        return of_split
    named_splits = sorted({p.stem.split("-")[0] for p in files} & SPLIT_NAMES)
    if named_splits:  # reading a "test" file as the "train" split would be a silent leak
        raise PromptDataError(
            f"The folder {folder} holds the splits {named_splits} but none named {split!r}. "
            f"Pass split= one of those, or point at the file itself."
        )
    return files


def _load_local(path: Path, split: str) -> Dataset:
    files = _data_files_in(path, split) if path.is_dir() else [path]
    suffixes = {p.suffix.lower() for p in files}
    unknown = suffixes - set(FILE_BUILDERS)
    if unknown:
        raise PromptDataError(
            f"Cannot read {path}: the extension {sorted(unknown)[0]!r} is not supported. Use one of "
            f"{', '.join(FILE_BUILDERS)} (a .txt of one prompt per line becomes a .jsonl of "
            f'{{"prompt": ...}} rows).'
        )
    builders = {FILE_BUILDERS[s] for s in suffixes}
    if len(builders) > 1:
        raise PromptDataError(f"The folder {path} mixes file formats {sorted(builders)}; keep one format per folder.")
    if all(p.stat().st_size == 0 for p in files):
        raise PromptDataError(f"The prompt file {path} is empty. Point at a file that holds prompts.")
    (builder,) = builders
    try:
        return load_dataset(builder, data_files=[str(p) for p in files], split="train")
    except Exception as err:  # any failure to parse a local file is a data problem, reported as one
        detail = err.__cause__ or err  # DatasetGenerationError hides the parser's message in its cause
        raise PromptDataError(
            f"Could not read {path} as {builder}: {type(detail).__name__}: {detail}. Check that the file "
            f"is valid {builder} with one prompt per row and a header or field names."
        ) from err


def _offline() -> bool:
    return any(os.environ.get(var, "").upper() in {"1", "ON", "YES", "TRUE"} for var in _OFFLINE_VARS)


def _load_hub(source: str, name: str | None, split: str, data_files) -> Dataset:
    try:
        dataset = load_dataset(source, name, split=split, data_files=data_files)
    except (DatasetsError, ValueError, OSError) as err:
        if isinstance(err, ConnectionError) or _offline():
            raise PromptDataError(
                f"Cannot load the Hub dataset {source!r}: this process is offline (HF_HUB_OFFLINE or "
                f"HF_DATASETS_OFFLINE is set, or the Hub cannot be reached) and the dataset is not in "
                f"the local cache. Pass a local .jsonl/.json/.csv/.parquet file or folder instead, or "
                f"load it once with network access so that it is cached."
            ) from err
        if isinstance(err, DatasetNotFoundError):
            raise PromptDataError(
                f"There is no Hub dataset {source!r} (or it is private or gated). Check the name, or "
                f"pass a local .jsonl/.json/.csv/.parquet file."
            ) from err
        raise PromptDataError(f"Could not load the dataset {source!r} (config {name!r}, split {split!r}): {err}") from err
    if not isinstance(dataset, Dataset):
        raise PromptDataError(f"{source!r} loaded as a {type(dataset).__name__}; pass a split to get one Dataset.")
    return dataset


# --- checks -------------------------------------------------------------------------

_NO_TEMPLATE_MESSAGE = (
    "The prompts are chats (lists of role/content messages) but the tokenizer has no chat "
    "template to render them. Use a tokenizer (model) that has one, set tokenizer.chat_template, "
    "or choose a plain-text prompt column."
)


def _describe(source: Any) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "passed in"


def _preview(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _select_prompt_column(dataset: Dataset, prompt_column: str, where: str) -> Dataset:
    columns = dataset.column_names
    if prompt_column not in columns:
        raise PromptDataError(
            f"The dataset {where} has no column {prompt_column!r}; its columns are {columns}. Pass the "
            f"column that holds the prompts with --prompt_column (prompt_column=...)."
        )
    if prompt_column != "prompt":
        if "prompt" in columns:
            raise PromptDataError(
                f"The dataset {where} has both 'prompt' and {prompt_column!r} columns; renaming "
                f"{prompt_column!r} to 'prompt' would clash. Drop or rename one of them."
            )
        dataset = dataset.rename_column(prompt_column, "prompt")
    for column in RESERVED_COLUMNS:
        if column in dataset.column_names:
            raise PromptDataError(
                f"The dataset {where} has a column named {column!r}, which clashes with the "
                f"'prompts'/'completions' keywords that reward functions are called with. Rename it, "
                f"e.g. dataset.rename_column({column!r}, {column[:-1] + '_text'!r}), or in the file."
            )
    return dataset


def _bad_prompt_message(prompt: Any, row: int | None = None) -> str:
    at = f"Row {row} of the prompt column" if row is not None else "The prompt"
    if isinstance(prompt, (list, tuple)):
        return (
            f"{at} is a malformed chat: {_preview(prompt)}. A chat prompt must be a non-empty list of "
            f"{{'role': str, 'content': str}} dicts, e.g. [{{'role': 'user', 'content': 'What is 2 + 2?'}}]. "
            f"Fix that row, or use a plain-text prompt column."
        )
    return (
        f"{at} is {type(prompt).__name__} {_preview(prompt)}, but a prompt must be a string or a chat "
        f"(a list of role/content dicts). Fill or drop that row, or choose another column with --prompt_column."
    )


def _check_prompt_types(prompts: list) -> bool:
    """Raise on the first prompt that is neither a string nor a chat; return True if any is a chat."""
    has_chat = False
    for row, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            continue
        if not is_chat(prompt):
            raise PromptDataError(_bad_prompt_message(prompt, row))
        has_chat = True
    return has_chat


def _limit_prompt_length(dataset: Dataset, tokenizer, max_prompt_length: int, long_prompts: str) -> Dataset:
    texts = [render_prompt(tokenizer, p) for p in dataset["prompt"]]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > max_prompt_length]
    if not too_long:
        return dataset
    count = f"{len(too_long)} of {len(lengths)} prompts are longer than max_prompt_length={max_prompt_length} tokens"
    if long_prompts == "error":
        raise PromptDataError(
            f"{count} (the longest has {max(lengths)} tokens, row {lengths.index(max(lengths))}). Raise "
            f"--max_prompt_length to at least {max(lengths)}, or pass long_prompts='filter' to drop them."
        )
    if len(too_long) == len(lengths):
        raise PromptDataError(
            f"{count}: filtering would leave none. Raise --max_prompt_length (the shortest has {min(lengths)} tokens)."
        )
    warnings.warn(f"Dropped {len(too_long)} prompts: {count}.", stacklevel=3)
    dropped = set(too_long)
    return dataset.select([i for i in range(len(lengths)) if i not in dropped])
