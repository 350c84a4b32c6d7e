"""The cost table (frpo.cost): the jobs it counts are the jobs the DAG plans, and its GPU-hours are each job's
declared GPUs × runtime."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from configs import load_config, write_config

from frpo.cli import main
from frpo.cost import cost_rows

ROOT = Path(__file__).resolve().parents[1]


def paper() -> dict:
    """The paper config's math track."""
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    config["tracks"] = {"math": config["tracks"]["math"]}
    return config


def by_stage(rows):
    out = {}
    for r in rows:
        stage = r["stage"].split(" ")[0]
        out[stage] = out.get(stage, 0) + r["jobs"]
    return out


def test_the_paper_math_track_costs_what_its_jobs_declare():
    rows = {r["stage"]: r for r in cost_rows(paper())}
    assert by_stage(rows.values()) == {"rl_train": 8, "finetune": 24, "eval_math500": 33, "eval_mbpp_plus": 33}
    rl = rows["rl_train"]  # compute.sizes.7b.rl: 4 GPUs, 1440 minutes
    assert (rl["gpus_per_job"], rl["hours_per_job"], rl["gpu_hours"]) == (4, 24, 8 * 4 * 24)
    config = paper()
    config["tracks"]["math"]["model"]["size"] = "32b"
    big = {r["stage"]: r for r in cost_rows(config)}
    assert big["rl_train"]["gpu_hours"] == 8 * 8 * 48 and big["finetune (lora)"]["gpus_per_job"] == 4


def test_the_jobs_counted_are_the_jobs_a_dry_run_plans(tmp_path):
    config = load_config("smoke.yaml")
    config["tracks"]["safety"]["rl"]["lambda_star"]["enabled"] = False  # its checkpoint would defer jobs
    cfg = write_config(tmp_path / "smoke.yaml", config)
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--cores", "1",
                          "-d", str(tmp_path), "--configfile", str(cfg)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    planned = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M)}
    counted = by_stage(cost_rows(config))
    for stage, n in counted.items():
        assert planned.get(stage) == n, (stage, n, planned)


def test_the_cost_command_prints_the_table(tmp_path, capsys, monkeypatch):
    from configs import PAPER_ENV, paper_files

    paper_files(tmp_path)  # the safety experiments' local files, where the paper config names them
    monkeypatch.chdir(tmp_path)
    for key, value in PAPER_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["cost", "--config", str(ROOT / "config" / "paper.yaml")]) == 0
    table = capsys.readouterr().out
    assert "| math | rl_train | 8 | 4 | 24 | 768 |" in table
    # Mistral: 7 runs x 3 seeds on the 7b size's 4 GPUs for 24 h; Qwen2.5-32B's GRPO run on 8 GPUs for 48 h
    assert "| mistral | rl_train | 21 | 4 | 24 | 2,016 |" in table and "| qwen32b | rl_train | 1 | 8 | 48 | 384 |" in table


def test_the_cost_command_plans_without_the_local_files_and_names_a_bad_key(tmp_path, capsys, monkeypatch):
    """What a run will cost is asked before its files and keys are in place: they are warnings, as under
    snakemake -n, and the table is the same; a wrong value is one line naming its key, not a traceback."""
    monkeypatch.chdir(tmp_path)  # no local file of the paper config here, and no API key
    for key in ("OPENAI_API_KEY",):
        monkeypatch.delenv(key, raising=False)
    assert main(["cost", "--config", str(ROOT / "config" / "paper.yaml")]) == 0
    out = capsys.readouterr()
    assert "| mistral | rl_train | 21 | 4 | 24 | 2,016 |" in out.out
    assert "planning only; a run would stop here" in out.err and "safety_prompts" in out.err
    bad = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    bad["tracks"]["math"]["rl"]["num_generations"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit) as exc:
        main(["cost", "--config", str(path)])
    message = str(exc.value)
    assert message.startswith("frpo cost: invalid configuration") and "Traceback" not in message
    assert "tracks.math.rl.num_generations: 1 is less than the minimum of 2" in message
