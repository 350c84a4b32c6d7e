"""The safety track's paper data (spec §1.2, §2.1, §2.2): the Alpaca and GSM8K hub loaders (with an offline
double of ``datasets.load_dataset``), the public RL parquet's task mapping and stratified split (a synthetic
parquet with the real file's ability counts), and how the track declares and prepares them."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.model_selection import train_test_split

from frpo import cli
from frpo.data import read_safety_prompts, safety_sources
from frpo.data.safety_sources import (
    ALPACA_REVISION, ALPACA_SOURCE, GSM8K_REVISION, GSM8K_SOURCE, alpaca_rows, gsm8k_final, gsm8k_rows,
    safety_prompt_rows,
)
from frpo.sft import sft_rows
from frpo.tracks import safety

#: the public parquet's ability counts (spec §1.2)
ABILITIES = {"refusal": 1000, "wildjailbreak": 413, "rainbow": 391, "aegis": 196}


class FakeHub:
    """``datasets.load_dataset`` offline: the rows of each (name, config), and every call's arguments."""

    def __init__(self, tables: dict):
        self.tables, self.calls = tables, []

    def __call__(self, name, config=None, *, split, revision):
        self.calls.append((name, config, split, revision))
        return iter(self.tables[(name, config)])


def _alpaca(n):
    return [{"instruction": f"  Task {i}. ", "input": "" if i % 3 else f"ctx {i}", "output": f" answer {i}\n"}
            for i in range(n)]


def _gsm8k(n):
    return [{"question": f"Q{i}?", "answer": f"Step <<{i}+1={i + 1}>>{i + 1}.\nSo it is {i + 1}.\n#### {i + 1}"}
            for i in range(n)]


def _write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _public_rows():
    """2000 rows with the public file's columns and ability counts, abilities interleaved (seeded)."""
    abilities = [a for a, n in ABILITIES.items() for _ in range(n)]
    random.Random(0).shuffle(abilities)
    return [{"data_source": "", "prompt": [{"role": "user", "content": f"prompt {i} ({a})"}], "ability": a,
             "reward_model": {"ground_truth": "", "style": "rule"}, "extra_info": {"index": i, "split": "train"}}
            for i, a in enumerate(abilities)]


@pytest.fixture(scope="module")
def public_parquet(tmp_path_factory):
    return _write_parquet(tmp_path_factory.mktemp("safety") / "train_lambda_0.5.parquet", _public_rows())


# ------------------------------------------------------------------ Alpaca and GSM8K


def _sft(rows, fmt, tmp_path):
    """The prepared rows as the fine-tuning stage reads them (frpo.sft.sft_rows, split ``train``)."""
    path = tmp_path / f"{fmt}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sft_rows({"path": str(path), "format": fmt, "split": "train"})


def test_alpaca_rows_first_40000_first_50_eval(tmp_path):
    table = _alpaca(120)
    table[52]["input"] = None
    hub = FakeHub({(ALPACA_SOURCE, None): table})
    rows = alpaca_rows(load_dataset=hub)
    assert hub.calls == [(ALPACA_SOURCE, None, "train", ALPACA_REVISION)]
    assert len(rows) == 120  # fewer than 40,000: all of them
    assert [r["split"] for r in rows] == ["eval"] * 50 + ["train"] * 70
    assert rows[0] == {"instruction": "Task 0.", "input": "ctx 0", "output": "answer 0", "split": "eval"}
    assert rows[52]["input"] == ""
    capped = alpaca_rows(n_rows=80, load_dataset=FakeHub({(ALPACA_SOURCE, None): _alpaca(120)}))
    assert len(capped) == 80 and capped[-1]["instruction"] == "Task 79."
    # the prepared rows are the SFT format's input: the public script's user turn and stripped output
    sft = _sft(rows, safety.FINETUNE["alpaca"], tmp_path)
    assert len(sft) == 70
    assert sft[0]["prompt"] == [{"role": "user", "content": "### Instruction:\nTask 50."}]
    assert sft[1]["prompt"][0]["content"] == "### Instruction:\nTask 51.\n\n### Input:\nctx 51"
    assert sft[0]["completion"] == [{"role": "assistant", "content": "answer 50"}]


def test_alpaca_rows_refuse_bad_rows():
    bad = _alpaca(60)
    bad[7]["output"] = None
    with pytest.raises(ValueError, match=r"tatsu-lab/alpaca train row 7: field 'output' must be a string"):
        alpaca_rows(load_dataset=FakeHub({(ALPACA_SOURCE, None): bad}))
    with pytest.raises(ValueError, match="n_rows"):
        alpaca_rows(n_rows=50, load_dataset=FakeHub({}))


def test_gsm8k_rows_cut_before_the_final_line(tmp_path):
    table = _gsm8k(60)
    table[55]["answer"] = "She pays 1,000 + 234 = <<1000+234=1234>>1234.\n#### 1,234"
    table[56]["answer"] = "It drops by 3.\n####-3"
    hub = FakeHub({(GSM8K_SOURCE, "main"): table})
    rows = gsm8k_rows(load_dataset=hub)
    assert hub.calls == [(GSM8K_SOURCE, "main", "train", GSM8K_REVISION)]
    assert [r["split"] for r in rows] == ["eval"] * 50 + ["train"] * 10
    assert rows[0] == {"question": "Q0?", "answer": "Step <<0+1=1>>1.\nSo it is 1.", "final": 1.0, "split": "eval"}
    assert (rows[55]["answer"], rows[55]["final"]) == ("She pays 1,000 + 234 = <<1000+234=1234>>1234.", 1234.0)
    assert rows[56]["final"] == -3.0
    assert all("####" not in r["answer"] for r in rows)
    sft = _sft(rows, safety.FINETUNE["gsm8k"], tmp_path)
    assert len(sft) == 10 and sft[0]["prompt"][0]["content"] == "Q50?"
    assert sft[0]["completion"][0]["content"] == "Step <<50+1=51>>51.\nSo it is 51."


def test_gsm8k_rows_refuse_a_row_without_a_final_number():
    table = _gsm8k(60)
    table[12]["answer"] = "No final line here."
    with pytest.raises(ValueError, match=r"openai/gsm8k \(main\) train row 12: the answer has no '####'"):
        gsm8k_rows(load_dataset=FakeHub({(GSM8K_SOURCE, "main"): table}))
    with pytest.raises(ValueError, match=r"row 3: the text after '####' is not a number: 'twelve'"):
        gsm8k_final("x\n#### twelve", "row 3")
    with pytest.raises(ValueError, match="no more than the 50 held out"):
        gsm8k_rows(load_dataset=FakeHub({(GSM8K_SOURCE, "main"): _gsm8k(50)}))


# ------------------------------------------------------------------ the public RL parquet


def test_safety_parquet_mapping_and_public_split(public_parquet):
    rows, info = safety_prompt_rows(public_parquet)
    source = _public_rows()
    assert len(rows) == 2000
    assert [r["prompt"] for r in rows] == [s["prompt"][0]["content"] for s in source]  # file order kept
    assert [r["category"] for r in rows] == [s["ability"] for s in source]
    assert all(r["task"] == ("normal" if r["category"] == "refusal" else "safety") for r in rows)
    assert set(rows[0]) == {"prompt", "task", "split", "category"}
    # the public script's call, on the same task list
    tasks = ["normal" if s["ability"] == "refusal" else "safety" for s in source]
    _, val = train_test_split(range(2000), test_size=0.025, random_state=42, stratify=tasks)
    held_out = {i for i, r in enumerate(rows) if r["split"] == "eval"}
    assert held_out == set(val)
    assert held_out != set(range(50))  # drawn, not the first rows
    # 1950 / 50, stratified: half of each split is benign, as in the file
    assert (info["train"], info["eval"], info["rows_in"]) == (1950, 50, 2000)
    assert info["eval_by_task"] == {"normal": 25, "safety": 25}
    assert info["by_ability"] == ABILITIES


def test_safety_parquet_through_the_track_and_prepare_data(public_parquet, tmp_path):
    assert safety.prepared("safety_prompts", str(public_parquet))
    assert not safety.prepared("safety_prompts", "builtin:safety_prompts")
    assert not safety.prepared("safety_prompts", "prompts.jsonl")
    assert not safety.prepared("alpaca", "builtin:alpaca_like")
    assert safety.prepared("gsm8k", "hub:gsm8k") and safety.prepared("alpaca", "hub:alpaca")
    out = tmp_path / "safety_prompts.jsonl"
    spec = {"track": "safety", "key": "safety_prompts", "data": {"safety_prompts": str(public_parquet)}}
    assert cli.main(["prepare-data", "--spec", json.dumps(spec), "--out", str(out)]) in (0, None)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert (summary["rows"], summary["train"], summary["eval"]) == (2000, 1950, 50)
    held_out = read_safety_prompts(out, "eval")
    assert len(held_out) == 50 and Counter(r["task"] for r in held_out) == {"normal": 25, "safety": 25}
    assert len(read_safety_prompts(out, "train", task="safety")) == 975
    ds = safety.rl_dataset({"data": {"safety_prompts": str(out)}}, "eval")
    assert len(ds) == 50 and ds[0]["prompt"] == [{"role": "user", "content": held_out[0]["prompt"]}]


@pytest.mark.parametrize("row, message", [
    ({"prompt": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "ability": "aegis"},
     r"row 7: 'prompt' must be a list of exactly one"),
    ({"prompt": [{"role": "assistant", "content": "a"}], "ability": "aegis"}, r"row 7: 'prompt' must be"),
    ({"prompt": [{"role": "user", "content": "  "}], "ability": "aegis"}, r"row 7: the user message's 'content'"),
    ({"prompt": [{"role": "user", "content": "a"}], "ability": "harmbench"},
     r"row 7: unknown ability 'harmbench' \(known: refusal, wildjailbreak, rainbow, aegis\)"),
])
def test_safety_parquet_refuses_a_malformed_row(tmp_path, row, message):
    rows = [{"prompt": [{"role": "user", "content": f"p{i}"}], "ability": ("refusal", "aegis")[i % 2]}
            for i in range(200)]
    rows[7] = row
    path = _write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(ValueError, match=f"bad.parquet: {message}"):
        safety_prompt_rows(path)


def test_safety_parquet_refuses_a_bad_file(tmp_path):
    no_ability = _write_parquet(tmp_path / "cols.parquet", [{"prompt": [{"role": "user", "content": "a"}]}])
    with pytest.raises(ValueError, match=r"cols.parquet: missing column\(s\) 'ability'"):
        safety_prompt_rows(no_ability)
    text = tmp_path / "prompts.parquet"
    text.write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="prompts.parquet: cannot read as parquet"):
        safety_prompt_rows(text)
    lone = _write_parquet(tmp_path / "lone.parquet", [{"prompt": [{"role": "user", "content": f"p{i}"}],
                                                       "ability": "aegis" if i else "refusal"} for i in range(40)])
    with pytest.raises(ValueError, match="lone.parquet: cannot split 40 rows stratified by task"):
        safety_prompt_rows(lone)


# ------------------------------------------------------------------ the track's declarations


def test_track_declares_and_prepares_hub_sources(monkeypatch):
    optional = {k for k, spec in safety.DATA.items() if spec.get("optional")}
    assert optional == {"refusal_demos", "judge_labelled", "arithmetic", "alpaca", "gsm8k", "instructions"}
    assert {k for k, spec in safety.DATA.items() if spec.get("hub")} == set(safety.HUB_SOURCES) == {"alpaca",
                                                                                                 "gsm8k"}
    assert all(hasattr(safety_sources, loader) for loader in safety.HUB_SOURCES.values())
    assert safety.FINETUNE["gsm8k"] == "gsm8k"
    hub = FakeHub({(GSM8K_SOURCE, "main"): _gsm8k(70), (ALPACA_SOURCE, None): _alpaca(90)})
    monkeypatch.setattr(safety_sources, "_default_load_dataset", lambda: hub)
    rows, info = safety.prepare("gsm8k", {"data": {"gsm8k": "hub:gsm8k"}})
    assert len(rows) == 70 and info == {"train": 20, "eval": 50}
    assert all(isinstance(r[f], t) for r in rows for f, t in safety.DATA["gsm8k"]["fields"].items())
    rows, info = safety.prepare("alpaca", {"data": {"alpaca": "hub:alpaca"}})
    assert len(rows) == 90 and info == {"train": 40, "eval": 50}
    assert all(isinstance(r[f], t) for r in rows for f, t in safety.DATA["alpaca"]["fields"].items())
    with pytest.raises(ValueError, match=r"data.gsm8k: hub source 'hub:alpaca' is for data.alpaca"):
        safety.prepare("gsm8k", {"data": {"gsm8k": "hub:alpaca"}})
    with pytest.raises(ValueError, match=r"data.alpaca: unknown hub source 'hub:dolly'"):
        safety.prepare("alpaca", {"data": {"alpaca": "hub:dolly"}})
    with pytest.raises(ValueError, match=r"data.alpaca: 'builtin:alpaca_like' is read as configured"):
        safety.prepare("alpaca", {"data": {"alpaca": "builtin:alpaca_like"}})


def test_the_probes_take_exactly_their_count_from_the_configured_split():
    from frpo.data import read_safety_prompts

    spec = {"data": {"safety_prompts": "builtin:safety_prompts"},
            "judges": {"safety": {"name": "toy_safety"}, "helpfulness": {"name": "toy_helpfulness"}},
            "track_forgetting": {"n_prompts": {"safety": 5, "helpfulness": 3}}}
    train = {r["prompt"] for r in read_safety_prompts("builtin:safety_prompts", "train")}
    held_out = {r["prompt"] for r in read_safety_prompts("builtin:safety_prompts", "eval")}
    by_name = {p.name: p for p in safety.probes(spec)}  # the default: the training prompts (the public tracker's)
    assert len(by_name["safety"].prompts) == 5 and len(by_name["helpfulness"].prompts) == 3
    assert set(by_name["safety"].prompts) <= train and set(by_name["helpfulness"].prompts) <= train
    spec["track_forgetting"]["prompts"] = "eval"
    assert set(safety.probes(spec)[0].prompts) <= held_out
    spec["track_forgetting"]["n_prompts"]["safety"] = 10_000  # a prepared file is counted here, at job start
    with pytest.raises(ValueError, match=r"finetune\.track\.n_prompts\.safety: 10000 asked for, but there are only "
                                         r"\d+ safety prompts in split 'eval'"):
        safety.probes(spec)
