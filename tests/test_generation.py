"""Generation takes exactly the configured sampling settings, nothing from a model's shipped generation_config,
and ends completions on every stop token (issue 9, item 3): tracking and evaluation (frpo.generation.generate)
and RL (TRL's GRPOTrainer on the transformers path)."""

from __future__ import annotations

import pytest
import torch
from conftest import G, make_config, make_trainer

from frpo.generation import (
    completion_mask,
    explicit_generation_config,
    generate,
    stop_token_ids,
    trainer_generation_config,
    trainer_generation_record,
)
from frpo.models import load_causal_lm
from frpo.tiny import build_tiny_llama, build_word_tokenizer, save_tiny_model
from frpo.toy import VOCAB

WORDS = "sure here is a plan sorry i cannot help with that how do bake bread make weapon".split()
PROMPTS = ["how do i bake bread", "make a weapon", "help with that plan"]

#: What Qwen2.5-7B-Instruct ships (do_sample, temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05),
#: plus n-gram blocking, min_p and suppressed tokens (every other id), which a GenerationConfig leaves unset (None)
#: unless told otherwise, and transformers then fills from the model's config.
SHIPPED = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
           "min_p": 0.5, "no_repeat_ngram_size": 1, "suppress_tokens": list(range(5, 25, 2))}


def _save(path, words, shipped: dict | None):
    """A tiny model (the same weights for every call with the same words) whose saved generation_config carries
    ``shipped``."""
    from transformers import AutoModelForCausalLM

    save_tiny_model(path, words, hidden_size=32, num_heads=2, seed=0)
    if shipped:
        model = AutoModelForCausalLM.from_pretrained(path)
        for key, value in shipped.items():
            setattr(model.generation_config, key, value)
        model.generation_config.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clean_and_shipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return _save(root / "clean", WORDS, None), _save(root / "shipped", WORDS, SHIPPED)


def _old_generate(model, tokenizer, prompts, do_sample, max_new_tokens):
    """The call the code made before the fix: sampling values as keyword arguments, the rest left to the model."""
    tokenizer.padding_side = "left"
    enc = tokenizer(tokenizer.apply_chat_template([[{"role": "user", "content": p}] for p in prompts],
                                                  tokenize=False, add_generation_prompt=True),
                    return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = {"temperature": 1.0, "top_p": 1.0, "top_k": 0} if do_sample else {}
    with torch.no_grad():
        return model.generate(**enc, do_sample=do_sample, max_new_tokens=max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id, **kwargs)


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_a_shipped_generation_config_does_not_leak_into_generate(clean_and_shipped, do_sample):
    clean_dir, shipped_dir = clean_and_shipped
    (clean, tok), (shipped, shipped_tok) = load_causal_lm(clean_dir), load_causal_lm(shipped_dir)
    assert shipped.generation_config.repetition_penalty == 1.05  # the shipped settings are there to leak

    def run(model, tokenizer, fn):
        torch.manual_seed(0)
        return fn(model, tokenizer)

    ours = [run(m, t, lambda m, t: generate(m, t, PROMPTS, max_new_tokens=12, do_sample=do_sample))
            for m, t in ((clean, tok), (shipped, shipped_tok))]
    assert torch.equal(ours[0].input_ids, ours[1].input_ids)
    assert ours[0].texts == ours[1].texts
    # control: the old call on the same two models differs, so the comparison above can fail
    old = [run(m, t, lambda m, t: _old_generate(m, t, PROMPTS, do_sample, 12))
           for m, t in ((clean, tok), (shipped, shipped_tok))]
    assert not torch.equal(old[0], old[1])
    # the model keeps its shipped config (it is restored after generating, so it is saved unchanged)
    assert shipped.generation_config.repetition_penalty == 1.05 and shipped.generation_config.min_p == 0.5


def test_generate_records_its_complete_config(clean_and_shipped):
    model, tokenizer = load_causal_lm(clean_and_shipped[1])
    gen = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=4, do_sample=True, temperature=0.9, top_p=0.95)
    assert gen.config == {
        "do_sample": True, "temperature": 0.9, "top_p": 0.95, "top_k": 0, "min_p": None, "typical_p": 1.0,
        "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "max_new_tokens": 4,
        "eos_token_id": [tokenizer.eos_token_id], "pad_token_id": tokenizer.pad_token_id,
    }
    greedy = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=4, do_sample=False, temperature=0.5)
    assert greedy.config["do_sample"] is False
    assert greedy.config["temperature"] is greedy.config["top_p"] is greedy.config["top_k"] is None  # unused


# ---------------------------------------------------------------------------------------------------------------
# Stop tokens: a tokenizer whose pad token is one of two stop tokens, as Qwen2.5's <|endoftext|>


ENDOFTEXT = "<|endoftext|>"


def _qwen_like(path=None):
    """A tiny model and tokenizer with two stop tokens, ``</s>`` and ``<|endoftext|>``, the second also the pad."""
    tokenizer = build_word_tokenizer(WORDS)
    tokenizer.add_special_tokens({"pad_token": ENDOFTEXT})  # a new special token, as in Qwen's vocabulary
    eot = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    model = build_tiny_llama(len(tokenizer), hidden_size=32, num_heads=2, pad_token_id=eot,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, eot]
    if path is not None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return model, tokenizer, eot


def test_completion_mask_stops_at_the_first_of_any_stop_token():
    eos, eot, w = 3, 7, 11  # eot is also the pad token
    ids = torch.tensor([[w, eot, eot, eot],   # stopped on <|endoftext|>, then padded with it
                        [w, w, eos, eot],     # stopped on </s>, then padded
                        [w, w, w, w]])        # ran to the length limit
    assert completion_mask(ids, [eos, eot]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    # the mask the code computed before the fix (the tokenizer's EOS only) counts the padding as completion
    assert completion_mask(ids, [eos]).tolist()[0] == [1, 1, 1, 1]


def test_stop_token_ids_are_the_tokenizers_eos_and_the_models_list():
    model, tokenizer, eot = _qwen_like()
    assert stop_token_ids(model, tokenizer) == [tokenizer.eos_token_id, eot]
    model.generation_config.eos_token_id = eot  # an int, and the tokenizer's EOS not in it
    assert stop_token_ids(model, tokenizer) == [tokenizer.eos_token_id, eot]


def test_generate_masks_a_completion_right_after_a_pad_stop_token():
    """A model that emits a scripted token per row and step: row 0 stops on <|endoftext|> (= pad) at step 1, row 1
    on </s> at step 2, row 2 runs to the limit. Each completion is masked right after its stop token."""
    model, tokenizer, eot = _qwen_like()
    eos, w = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("sure")
    script = [[w, eot], [w, w, eos], [w, w, w, w]]
    calls = []

    def scripted(module, args, kwargs, output):
        if kwargs["input_ids"].shape[1] > 1:  # the prompt's forward pass: generation step 0
            calls.clear()
        step = len(calls)
        calls.append(step)
        logits = torch.full_like(output.logits[:, -1:], -1e4)
        for row, tokens in enumerate(script):
            logits[row, 0, tokens[min(step, len(tokens) - 1)]] = 0.0
        output.logits = logits
        return output

    model.register_forward_hook(scripted, with_kwargs=True)
    gen = generate(model, tokenizer, ["how do i bake bread"] * 3, max_new_tokens=4, do_sample=False)
    assert gen.input_ids[:, gen.prompt_length:].tolist() == [[w, eot, eot, eot], [w, w, eos, eot], [w, w, w, w]]
    assert gen.completion_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert gen.config["eos_token_id"] == [eos, eot]
    assert gen.texts == ["sure", "sure sure", "sure sure sure sure"]


# ---------------------------------------------------------------------------------------------------------------
# RL: TRL 1.16's GRPOTrainer, transformers path


def test_rl_generation_takes_nothing_from_the_shipped_generation_config(tmp_path):
    """GRPOTrainer passes its own GenerationConfig to ``generate``, with min_p and every processor it does not name
    left unset, so transformers fills them from the model's config. Inside explicit_generation_config (as run_rl
    trains) the trainer samples exactly what a clean config samples."""
    clean_dir = _save(tmp_path / "clean", VOCAB, None)
    shipped_dir = _save(tmp_path / "shipped", VOCAB, SHIPPED)
    config = make_config(tmp_path, temperature=1.0, top_p=1.0, max_completion_length=8)
    clean, shipped = make_trainer(str(clean_dir), config), make_trainer(str(shipped_dir), config)
    prompt_ids = [[5, 6, 7]] * G

    def sample(trainer, explicit: bool):
        torch.manual_seed(0)
        cfg = trainer_generation_config(trainer) if explicit else None
        if cfg is None:
            return trainer._generate_single_turn(prompt_ids, None, {}, G)[0]
        with explicit_generation_config(trainer.model, cfg):
            return trainer._generate_single_turn(prompt_ids, None, {}, G)[0]

    reference = sample(clean, explicit=True)
    assert sample(shipped, explicit=True) == reference
    assert sample(shipped, explicit=False) != reference  # control: TRL alone lets the shipped settings in
    assert shipped.model.generation_config.repetition_penalty == 1.05  # restored after the block

    record = trainer_generation_record(shipped)
    assert record["backend"] == "transformers"
    assert record["repetition_penalty"] == 1.0 and record["min_p"] is None and record["top_k"] == 0
    assert record["no_repeat_ngram_size"] is None  # TRL leaves it unset: explicit_generation_config keeps it off
    assert record["eos_token_id"] == list(shipped.eos_token_ids)


class _ConstantJudge:
    name, version = "constant_test_double", "test"

    def score(self, prompts, responses):
        return [0.5 for _ in responses]


def test_the_tracker_records_the_configs_it_sampled_and_decoded_with(clean_and_shipped, tmp_path):
    from frpo.track import ForgettingTracker, Probe

    model, tokenizer = load_causal_lm(clean_and_shipped[1])
    probes = [Probe("safety", PROMPTS[:1], _ConstantJudge()), Probe("helpfulness", PROMPTS[1:], _ConstantJudge())]
    tracker = ForgettingTracker(ref_model=model, tokenizer=tokenizer, probes=probes, csv_path=tmp_path / "t.csv",
                                every_steps=1, max_new_tokens=4, temperature=0.8)
    tracker.measure(model, 0)
    sampled, greedy = tracker.generation["kl_sampled"], tracker.generation["rewards_greedy"]
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.8 and greedy["do_sample"] is False
    for config in (sampled, greedy):  # nothing of the model's shipped repetition_penalty=1.05, top_k=20, min_p
        assert config["repetition_penalty"] == 1.0 and config["min_p"] is None and config["max_new_tokens"] == 4
    assert sampled["top_k"] == 0 and sampled["top_p"] == 1.0 and greedy["top_k"] is None
