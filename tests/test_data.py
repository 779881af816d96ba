"""Prompt data: GSM8K parsing, custom datasets in every format, and each bad-input error."""

import copy
import json
import warnings

import pytest
from datasets import Dataset

from llm_rl.data import (
    PromptDataError,
    is_chat,
    load_gsm8k,
    load_prompts,
    load_task,
    render_prompt,
)
from llm_rl.data.gsm8k import GSM8K_INSTRUCTION, gsm8k_gold_answer
from reward_models.math import answers_match

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def no_template_tokenizer(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = None
    return tokenizer


# --- GSM8K ----------------------------------------------------------------------------


def test_gsm8k_test_split_from_folder(gsm8k_dir):
    data = load_gsm8k(str(gsm8k_dir), split="test")
    assert len(data) == 1319
    assert data.column_names == ["prompt", "answer", "solution"]
    first = data[0]
    assert first["answer"] == "18"
    assert first["prompt"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first["prompt"].endswith("\n" + GSM8K_INSTRUCTION)
    assert first["solution"].endswith("#### 18")
    assert data[146]["answer"] == "2125"  # "#### 2,125" in the file
    assert all("," not in a and a.lstrip("-").isdigit() for a in data["answer"])
    # The gold answer is what the reward function reads from the solution.
    assert all(answers_match(s, a) for s, a in zip(data["solution"], data["answer"]))


def test_gsm8k_file_and_load_task_dispatch(gsm8k_dir):
    by_file = load_gsm8k(str(gsm8k_dir / "test.jsonl"))
    assert len(by_file) == 1319 and by_file[2]["answer"] == "70000"
    by_task = load_task(str(gsm8k_dir / "test.jsonl"))
    assert list(by_task["answer"])[:3] == ["18", "3", "70000"]


def test_gsm8k_gold_answer():
    assert gsm8k_gold_answer("a\nb\n#### 1,450,000") == "1450000"
    assert gsm8k_gold_answer("#### -3 ") == "-3"
    assert gsm8k_gold_answer("no marker 12") is None
    assert gsm8k_gold_answer("####  ") is None


def test_gsm8k_missing_fields(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "1 + 1?", "solution": "#### 2"}])
    with pytest.raises(PromptDataError, match=r"missing the field\(s\) \['answer'\].*'question', 'solution'"):
        load_gsm8k(path)
    path = write_jsonl(tmp_path / "nomarker.jsonl", [{"question": "1 + 1?", "answer": "2"}])
    with pytest.raises(PromptDataError, match="Row 0 .* no '#### <number>' line"):
        load_gsm8k(path)


def test_gsm8k_hub_offline():
    with pytest.raises(PromptDataError, match="offline.*local .jsonl"):
        load_gsm8k("openai/gsm8k-not-cached-here", split="test")


# --- custom prompt datasets ---------------------------------------------------------


def test_jsonl_plain_prompts_keep_extra_columns(tmp_path):
    rows = [{"question": "What is 1 + 1?", "answer": "2", "level": 1}, {"question": "What is 3 * 3?", "answer": "9", "level": 2}]
    data = load_prompts(write_jsonl(tmp_path / "p.jsonl", rows), prompt_column="question")
    assert data.column_names == ["prompt", "answer", "level"]
    assert data["prompt"] == ["What is 1 + 1?", "What is 3 * 3?"]
    assert data["level"] == [1, 2]


def test_jsonl_chat_prompts_render_with_template(tmp_path, tiny_tokenizer):
    rows = [{"prompt": CHAT, "answer": "4"}, {"prompt": [{"role": "user", "content": "Hi"}], "answer": "0"}]
    data = load_prompts(write_jsonl(tmp_path / "chat.jsonl", rows), tokenizer=tiny_tokenizer)
    assert data["answer"] == ["4", "0"]
    assert is_chat(data[0]["prompt"]) and data[0]["prompt"] == CHAT
    text = render_prompt(tiny_tokenizer, data[0]["prompt"])
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(tiny_tokenizer, "plain") == "plain"


def test_csv_and_parquet(tmp_path):
    source = Dataset.from_dict({"text": ["What is 1 + 1?", "What is 2 + 5?"], "answer": ["2", "7"]})
    source.to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "pq").mkdir()
    source.to_parquet(tmp_path / "pq" / "train-00000-of-00001.parquet")
    for path in (tmp_path / "p.csv", tmp_path / "pq"):
        data = load_prompts(str(path), prompt_column="text")
        assert list(data["prompt"]) == list(source["text"]), path
        assert [str(a) for a in data["answer"]] == ["2", "7"], path  # csv infers integers


def test_dataset_used_as_is_and_arithmetic_task():
    data = Dataset.from_dict({"prompt": ["a", "b"], "answer": ["1", "2"]})
    assert load_prompts(data)["prompt"] == ["a", "b"]
    task = load_task("arithmetic", num_arithmetic=5, seed=3)
    assert len(task) == 5 and task.column_names == ["prompt", "answer"]


def test_folder_picks_the_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "train prompt"}])
    write_jsonl(tmp_path / "test.jsonl", [{"prompt": "test prompt"}])
    assert load_prompts(str(tmp_path), split="test")["prompt"] == ["test prompt"]
    with pytest.raises(PromptDataError, match=r"splits \['test', 'train'\] but none named 'validation'"):
        load_prompts(str(tmp_path), split="validation")


def test_is_chat():
    assert is_chat(CHAT)
    assert not is_chat("text")
    assert not is_chat([])
    assert not is_chat([{"role": "user"}])
    assert not is_chat(["What is 2 + 2?"])


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["missing.jsonl", "./nowhere", "some/deep/dir/file"])
def test_missing_local_path(path):
    with pytest.raises(PromptDataError, match="does not exist.*Check the path"):
        load_prompts(path)


def test_hub_name_offline():
    with pytest.raises(PromptDataError, match="offline.*local .jsonl.*cached") as info:
        load_prompts("someone/not-a-cached-dataset")
    assert info.value.__cause__ is not None


def test_unsupported_extension(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("What is 2 + 2?\n")
    with pytest.raises(PromptDataError, match=r"extension '\.txt' is not supported.*\.jsonl"):
        load_prompts(str(path))


def test_empty_file_and_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(PromptDataError, match="is empty"):
        load_prompts(str(path))
    with pytest.raises(PromptDataError, match="has no rows"):
        load_prompts(Dataset.from_dict({"prompt": []}))


def test_invalid_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(PromptDataError, match="Could not read .*bad.jsonl as json"):
        load_prompts(str(path))


def test_missing_prompt_column(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "x", "answer": "1"}])
    with pytest.raises(PromptDataError, match=r"no column 'prompt'; its columns are \['question', 'answer'\].*--prompt_column"):
        load_prompts(path)


def test_malformed_chat_and_wrong_type(tmp_path):
    bad_chat = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "fine"}]}, {"prompt": [{"role": "user", "content": None}]}]
    )
    with pytest.raises(PromptDataError, match="Row 1 of the prompt column is a malformed chat.*'role': str, 'content': str"):
        load_prompts(bad_chat)
    with pytest.raises(PromptDataError, match=r"Row 0 of the prompt column is a malformed chat: \['just', 'strings'\]"):
        load_prompts(Dataset.from_dict({"prompt": [["just", "strings"]]}))
    with pytest.raises(PromptDataError, match="Row 1 of the prompt column is NoneType.*string or a chat"):
        load_prompts(Dataset.from_dict({"prompt": ["ok", None]}))


def test_chat_without_template(no_template_tokenizer):
    data = Dataset.from_list([{"prompt": CHAT}])
    with pytest.raises(PromptDataError, match="no chat template.*plain-text prompt column"):
        load_prompts(data, tokenizer=no_template_tokenizer)
    with pytest.raises(PromptDataError, match="no chat template"):
        render_prompt(no_template_tokenizer, CHAT)
    assert len(load_prompts(Dataset.from_dict({"prompt": ["plain"]}), tokenizer=no_template_tokenizer)) == 1


@pytest.mark.parametrize("column", ["prompts", "completions"])
def test_reserved_column_names(column):
    data = Dataset.from_dict({"prompt": ["a"], column: ["b"]})
    with pytest.raises(PromptDataError, match=f"column named '{column}'.*clashes.*Rename it"):
        load_prompts(data)


def test_prompt_and_renamed_column_clash():
    data = Dataset.from_dict({"prompt": ["a"], "question": ["b"]})
    with pytest.raises(PromptDataError, match="both 'prompt' and 'question'"):
        load_prompts(data, prompt_column="question")


def _length_dataset(tokenizer):
    prompts = ["What is 1 + 1?", "What is 12 + 34? " * 3, "What is 12 + 34? " * 6, "What?"]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    return Dataset.from_dict({"prompt": prompts, "row": [0, 1, 2, 3]}), lengths


def test_long_prompts_error(tiny_tokenizer):
    data, lengths = _length_dataset(tiny_tokenizer)
    limit = sorted(lengths)[1]  # two prompts fit, two are longer
    message = rf"2 of 4 prompts are longer than max_prompt_length={limit}.*longest has {max(lengths)} tokens"
    with pytest.raises(PromptDataError, match=message + r".*--max_prompt_length.*long_prompts='filter'"):
        load_prompts(data, tokenizer=tiny_tokenizer, max_prompt_length=limit)
    assert len(load_prompts(data, tokenizer=tiny_tokenizer, max_prompt_length=max(lengths))) == 4


def test_long_prompts_filter(tiny_tokenizer):
    data, lengths = _length_dataset(tiny_tokenizer)
    limit = sorted(lengths)[1]
    with pytest.warns(UserWarning, match="Dropped 2 prompts"):
        kept = load_prompts(data, tokenizer=tiny_tokenizer, max_prompt_length=limit, long_prompts="filter")
    assert kept["row"] == [i for i, n in enumerate(lengths) if n <= limit] and len(kept) == 2
    with pytest.raises(PromptDataError, match="would leave none"):
        load_prompts(data, tokenizer=tiny_tokenizer, max_prompt_length=min(lengths) - 1, long_prompts="filter")


def test_chat_prompt_length_counts_the_template(tiny_tokenizer):
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}]}])
    rendered = render_prompt(tiny_tokenizer, data[0]["prompt"])
    n = len(tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert len(load_prompts(data, tokenizer=tiny_tokenizer, max_prompt_length=n)) == 1
    with pytest.raises(PromptDataError, match="1 of 1 prompts"):
        load_prompts(data, tokenizer=tiny_tokenizer, max_prompt_length=n - 1)


def test_bad_options():
    data = Dataset.from_dict({"prompt": ["a"]})
    with pytest.raises(PromptDataError, match="long_prompts must be one of"):
        load_prompts(data, long_prompts="truncate")
    with pytest.raises(PromptDataError, match="needs a tokenizer"):
        load_prompts(data, max_prompt_length=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dropped, nothing said
        load_prompts(data)
