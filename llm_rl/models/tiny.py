"""The embedded default model, built offline: a tiny tokenizer and a ~4M-parameter Qwen2.

Nothing here touches a model hub. ``ensure_tiny_model()`` builds once into a cache
folder and re-uses it; the result loads like any hub model::

    AutoModelForCausalLM.from_pretrained(path); AutoTokenizer.from_pretrained(path)

The warm start is a short supervised run on the arithmetic task (loss on the answer
tokens only) that stops as soon as held-out-style validation accuracy crosses a
threshold: an RL run then starts from a model that answers some problems, so groups
of completions disagree and carry signal, and the start point is stable across seeds.
Its training and validation problems leave out the task's unseen split
(``llm_rl.data.arithmetic.unseen_problems``), so ``accuracy_unseen`` is measured on
problems the model never trained on.

Command line: ``python -m llm_rl.models.tiny --out DIR`` (or ``llm-rl-tiny --out DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast, Qwen2Config
from transformers import Qwen2ForCausalLM

from llm_rl.data.arithmetic import UNSEEN_SEED, arithmetic_dataset, greedy_accuracy, make_problem, unseen_problems

PAD, EOS, BOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|bos|>", "<|im_start|>", "<|im_end|>"
# bump when the recipe below (or the unseen split it leaves out) changes, so old caches are not re-used
TINY_VERSION = "tiny-arith-v4"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = (
    "what is the answer how many much more less than total each per has have had were was are be "
    "a an of to in on for and or if then so it he she they we you i his her their its by with from "
    "at as times plus minus divided multiplied sum difference product solve find compute question "
    "user assistant system number numbers dollars cents hours minutes days weeks years apples "
    "books cookies students people money cost costs buy buys sold sells left after before half "
    "twice step think let us first second third final"
).split()


def _tokenizer_corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    arithmetic = [make_problem(rng)["prompt"] + " " + str(rng.randint(0, 200)) for _ in range(2000)]
    words = [" ".join(WORDS[i : i + 8]) for i in range(0, len(WORDS), 8)]
    capitalised = [w.capitalize() for w in WORDS]
    return arithmetic + words * 20 + [" ".join(capitalised)] * 5 + ["The answer is 42. #### 42 \\boxed{42} $3.50 3/4"] * 20


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with single-digit tokens, trained on a fixed corpus.

    Byte-level means any text (GSM8K, user prompts) encodes without unknown tokens;
    single digits make arithmetic learnable for a model this small. Deterministic.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, BOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        additional_special_tokens=[IM_START, IM_END],
        padding_side="left",
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(tokenizer, hidden_size: int = 256, num_layers: int = 4, **overrides) -> Qwen2Config:
    """A Qwen2 config sized by ``hidden_size``/``num_layers``; ``overrides`` go to ``Qwen2Config``.

    Width 256 (4.1M parameters), not 128 (1.1M): the narrower model needed ~700 supervised
    steps to reach 35% and RL from it levelled off near 62%, while this one learns the
    task several times faster in both phases for about twice the cost per step.
    """
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 32),
        num_key_value_heads=max(1, hidden_size // 64),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    kwargs.update(overrides)
    return Qwen2Config(**kwargs)


def build_untrained(tokenizer, seed: int = 0, **config_kwargs) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(tokenizer, **config_kwargs))
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        do_sample=True,
    )
    return model


def _sft_batch(tokenizer, problems: list[dict]) -> dict[str, torch.Tensor]:
    """Right-padded prompt+answer+EOS; labels are -100 everywhere but the answer and EOS."""
    prompts = tokenizer([p["prompt"] for p in problems], add_special_tokens=False)["input_ids"]
    answers = tokenizer([" " + p["answer"] for p in problems], add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(a) + 1 for p, a in zip(prompts, answers))
    input_ids = torch.full((len(problems), width), tokenizer.pad_token_id)
    labels = torch.full((len(problems), width), -100)
    attention_mask = torch.zeros((len(problems), width), dtype=torch.long)
    for i, (prompt_ids, answer_ids) in enumerate(zip(prompts, answers)):
        ids = prompt_ids + answer_ids + [tokenizer.eos_token_id]
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, len(prompt_ids) : len(ids)] = torch.tensor(ids[len(prompt_ids) :])
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def warm_start(
    model,
    tokenizer,
    seed: int = 0,
    target_accuracy: float = 0.35,
    max_steps: int = 1500,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    eval_every: int = 25,
    log=print,
) -> dict:
    """Supervised steps on arithmetic answers until validation greedy accuracy >= target.

    Training and validation problems both come from ``arithmetic_dataset``, which never
    draws the unseen split: even the early stop never looks at an unseen problem.
    """
    torch.manual_seed(seed)
    train = arithmetic_dataset(batch_size * max_steps, seed=seed + 1).to_list()
    # 400 problems: with 200 the early stop fired on lucky draws, ~10 points above held-out accuracy
    validation = arithmetic_dataset(400, seed=seed + 10_000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    # a short linear warm-up: without it the first large Adam steps stall this small model
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    model.train()
    accuracy, step = 0.0, 0
    for step in range(1, max_steps + 1):
        batch = _sft_batch(tokenizer, train[(step - 1) * batch_size : step * batch_size])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % eval_every == 0:
            accuracy = greedy_accuracy(model, tokenizer, validation)
            log(f"warm start step {step}: loss {loss.item():.3f}, validation accuracy {accuracy:.1%}")
            if accuracy >= target_accuracy:
                break
    return {"warm_start_steps": step, "validation_accuracy": accuracy}


def default_cache_dir() -> Path:
    root = os.environ.get("LLM_RL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm_rl"
    return Path(root)


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0, target_accuracy: float = 0.35, log=print) -> Path:
    """Build tokenizer + warm-started model and save them (safetensors) to ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))  # the same float sums, so the same model, anywhere
    try:
        tokenizer = build_tokenizer()
        model = build_untrained(tokenizer, seed=seed)
        report = warm_start(model, tokenizer, seed=seed, target_accuracy=target_accuracy, log=log)
    finally:
        torch.set_num_threads(threads)
    report.update(
        version=TINY_VERSION,
        seed=seed,
        unseen_split={"seed": UNSEEN_SEED, "problems": len(unseen_problems())},  # left out of the warm start
        parameters=sum(p.numel() for p in model.parameters()),
        build_seconds=round(time.perf_counter() - start, 1),
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "tiny_model.json").write_text(json.dumps(report, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)  # atomic: a half-built model is never mistaken for a cached one
    log(f"tiny model saved to {out_dir}: {json.dumps(report)}")
    return out_dir


def ensure_tiny_model(cache_dir: str | os.PathLike | None = None, seed: int = 0, log=print) -> Path:
    """Path of the cached default model, building it first (about a minute) when absent."""
    path = Path(cache_dir) if cache_dir else default_cache_dir() / f"{TINY_VERSION}-seed{seed}"
    if (path / "tiny_model.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # processes that start together (pytest -n 2, several runs) build it once
        if (path / "tiny_model.json").exists():
            return path
        log(f"building the embedded tiny model into {path} (offline, about a minute) ...")
        return build_tiny_model(path, seed=seed, log=log)


def load_tiny(path: str | os.PathLike):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the embedded tiny tokenizer + warm-started Qwen2 offline.")
    parser.add_argument("--out", default=None, help="output folder (default: the cache folder used by the recipes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and warm-start data")
    parser.add_argument("--target_accuracy", type=float, default=0.35, help="stop the warm start at this validation accuracy")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output folder holds a model")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else default_cache_dir() / f"{TINY_VERSION}-seed{args.seed}"
    if out.exists() and not args.force and (out / "tiny_model.json").exists():
        print(f"{out} already holds a tiny model (use --force to rebuild)")
        return
    build_tiny_model(out, seed=args.seed, target_accuracy=args.target_accuracy)


if __name__ == "__main__":
    main()
