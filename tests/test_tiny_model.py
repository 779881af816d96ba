import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_rl.models.tiny import build_tiny_model, build_tokenizer, ensure_tiny_model


def test_tokenizer_has_single_digit_tokens_specials_and_chat_template():
    tok = build_tokenizer()
    pieces = tok.convert_ids_to_tokens(tok("What is 47 + 38?", add_special_tokens=False)["input_ids"])
    assert "4" in pieces and "7" in pieces and "47" not in pieces
    assert tok.pad_token and tok.eos_token and tok.bos_token and len({tok.pad_token_id, tok.eos_token_id}) == 2
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert build_tokenizer().get_vocab() == tok.get_vocab()  # deterministic


def test_build_saves_a_from_pretrained_loadable_model_and_is_cached(tmp_path):
    out = build_tiny_model(tmp_path / "tiny", seed=0, target_accuracy=0.0, log=lambda *_: None)
    report = json.loads((out / "tiny_model.json").read_text())
    assert report["warm_start_steps"] >= 1 and 5e5 < report["parameters"] < 5e6
    assert (out / "model.safetensors").exists()
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok)
    mtime = (out / "model.safetensors").stat().st_mtime
    assert ensure_tiny_model(out) == out and (out / "model.safetensors").stat().st_mtime == mtime  # re-used
