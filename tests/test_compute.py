"""Training jobs placed by model size (frpo.compute) and started on several processes (frpo.launch): the lookup,
the SLURM resources it declares, the config checks, and the accelerate command lines (one node and several)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from configs import load_config

from frpo.compute import STRATEGIES, job
from frpo.config import ConfigError, finetune_spec, rl_spec, validate_config, view, warmup_spec
from frpo.launch import accelerate_command, strategy_file, target_command

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def paper(size: str | None = None) -> dict:
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    config["tracks"] = {"math": config["tracks"]["math"]}  # (the safety experiments read local files)
    if size:
        config["tracks"]["math"]["model"]["size"] = size
    return config


def test_the_paper_sizes_place_each_stage_as_the_config_says():
    v = view(paper(), "math")
    rl = job(v, "rl")
    assert (rl.size, rl.gpus, rl.nodes, rl.processes, rl.strategy) == ("7b", 4, 1, 4, "ddp")
    assert rl.resources() == {"gpu": 4, "gres": None, "nodes": 1, "tasks": None, "cpus_per_task": None,
                              "cpus_per_gpu": 8, "mem_mb": 256000, "runtime": 1440}
    assert rl.resources(attempt=2)["runtime"] == 2880  # doubled on the retry
    assert rl.launcher() == "frpo launch --processes 4 --nodes 1 --strategy ddp -- "
    assert job(v, "sft_lora").launcher() == ""  # one GPU: a plain process
    assert job(v, "sft_lora").resources()["gpu"] == 1


@pytest.mark.parametrize("size", ["14b", "32b"])
def test_large_models_ask_for_several_gpus_and_a_sharded_strategy(size):
    v = view(paper(size), "math")
    for stage in ("rl", "sft_lora", "sft_full"):
        j = job(v, stage)
        assert j.processes > 1 and j.strategy in ("zero3", "fsdp"), (size, stage, j)
        res = j.resources()
        gpus = res["gpu"] or int(res["gres"].split(":")[-1]) * res["nodes"]
        assert gpus * (res["nodes"] if res["gres"] else 1) >= 2


def test_several_nodes_ask_for_gpus_per_node_and_launch_with_srun():
    j = job(view(paper("32b"), "math"), "sft_full")
    res = j.resources()
    assert (res["gpu"], res["gres"], res["nodes"], j.processes) == (0, "gpu:8", 2, 16)
    assert "--nodes 2" in j.launcher()


def test_a_cpu_config_runs_its_processes_as_slurm_tasks():
    v = view(load_config("smoke.yaml"), "safety")
    j = job(v, "rl")
    assert (j.gpus, j.processes, j.strategy) == (0, 2, "ddp")
    res = j.resources()
    assert (res["tasks"], res["cpus_per_task"], res["gpu"], res["cpus_per_gpu"]) == (2, 1, 0, None)
    assert job(view(load_config("smoke.yaml"), "math"), "rl").processes == 1  # no size: the defaults


def test_a_config_without_compute_gets_one_process():
    config = load_config("config.yaml")
    assert "compute" not in config
    for stage in ("rl", "sft_lora", "sft_full"):
        j = job(view(config, "safety"), stage)
        assert j.processes == 1 and j.launcher() == "" and j.resources()["gpu"] == 0


def test_every_training_spec_records_its_placement_and_the_global_batch_stays_the_configured_one():
    config = paper("14b")
    v = view(config, "math")
    spec = rl_spec(v, "grpo", 0, None)
    assert spec["compute"] == {"stage": "rl", "size": "14b", "gpus_per_node": 4, "nodes": 1, "processes": 4,
                               "strategy": "zero3"}
    assert spec["rl"]["vllm"] == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.4}
    assert spec["report_to"] == ["tensorboard"]
    ft = finetune_spec(v, "code-lora-lr5e-5-ep1", 0, None)
    # written for one process (8 x 8 = 64 rows per step): on the 2 processes of 14b.sft_lora, 4 each
    assert ft["train"]["gradient_accumulation_steps"] == 4 and ft["compute"]["processes"] == 2
    smoke = view(load_config("smoke.yaml"), "safety")
    assert warmup_spec(smoke)["compute"]["stage"] == "sft_full"


def _invalid(config, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(config, SCHEMA)


def test_config_checks_name_the_key():
    validate_config(paper(), SCHEMA)
    bad = paper("70b")
    _invalid(bad, r"tracks\.math\.model\.size: '70b' is not one of compute\.sizes")
    bad = paper()
    bad["compute"]["sizes"]["7b"]["rl"]["vllm"]["tensor_parallel_size"] = 3
    _invalid(bad, r"compute\.sizes\.7b\.rl\.vllm\.tensor_parallel_size: 3 must divide")
    bad = paper()
    bad["compute"]["sizes"]["7b"]["rl"]["processes"] = 2
    _invalid(bad, r"compute\.sizes\.7b\.rl\.processes: on GPUs")
    bad = paper()
    bad["tracks"]["math"]["rl"]["gradient_accumulation_steps"] = 32  # 32 x 4 processes > 64 prompts
    _invalid(bad, r"tracks\.math\.rl\.prompts_per_step: 64 is not a multiple of gradient_accumulation_steps × "
                  r"processes = 128")
    bad = paper("32b")
    bad["tracks"]["math"]["finetune"]["gradient_accumulation_steps"] = 6  # 32b.sft_lora: 4 processes
    _invalid(bad, r"tracks\.math\.finetune\.gradient_accumulation_steps: 6 .* 4 processes")
    smoke = load_config("smoke.yaml")
    smoke["compute"]["sizes"]["tiny"]["rl"]["gpus"] = 1
    _invalid(smoke, r"compute\.sizes\.tiny\.rl\.gpus: device is cpu")
    smoke = load_config("smoke.yaml")
    smoke["compute"]["sizes"]["tiny"]["rl"]["strategy"] = "zero9"
    _invalid(smoke, r"compute\.sizes\.tiny\.rl\.strategy")


def test_strategies_name_existing_accelerate_configs(monkeypatch):
    monkeypatch.setenv("FRPO_ACCELERATE_CONFIGS", str(ROOT / "config" / "accelerate"))
    for name, rel in STRATEGIES.items():
        assert strategy_file(name) == (ROOT / rel).resolve()
        loaded = yaml.safe_load((ROOT / rel).read_text())
        ds = loaded.get("deepspeed_config", {}).get("deepspeed_config_file")
        if ds:  # the DeepSpeed options file it names exists, relative to the repository
            assert (ROOT / ds).is_file(), ds
    with pytest.raises(ValueError, match="--strategy 'zero9'"):
        strategy_file("zero9")


def test_the_accelerate_command_of_one_node_and_of_each_node_of_several():
    cfg = ROOT / STRATEGIES["zero2"]
    cmd = accelerate_command(["frpo", "rl", "--spec", "{}"], 4, cfg, port=29501)
    assert cmd[:4] == [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4" and cmd[cmd.index("--num_machines") + 1] == "1"
    assert cmd[-5:] == ["-m", "frpo.cli", "rl", "--spec", "{}"]
    node = accelerate_command(["frpo", "sft"], 16, cfg, nodes=2, machine_rank=1, main_ip="n01", port=29501)
    assert node[node.index("--machine_rank") + 1] == "1" and node[node.index("--main_process_ip") + 1] == "n01"
    with pytest.raises(ValueError, match="spread evenly"):
        accelerate_command(["frpo", "sft"], 3, cfg, nodes=2, main_ip="n01")
    with pytest.raises(ValueError, match="plain process"):
        accelerate_command(["frpo", "sft"], 1, cfg)
    assert target_command(["tests/distributed/x.py", "--a"]) == ["tests/distributed/x.py", "--a"]
    with pytest.raises(ValueError, match="must be `frpo <stage> ...` or a .py script"):
        target_command(["bash", "-c", "x"])


def test_the_multi_node_launcher_starts_one_launcher_per_node_with_srun(monkeypatch):
    """Without SLURM the srun line cannot run here: check the command `frpo launch` hands to srun."""
    import frpo.launch as launch

    calls = []
    monkeypatch.setattr(launch.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.setattr(launch, "_first_node", lambda: "node01")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("FRPO_ACCELERATE_CONFIGS", str(ROOT / "config" / "accelerate"))
    assert launch.launch(["frpo", "sft", "--spec", "{}"], 16, "zero3", nodes=2) == 0
    srun = calls[0]
    assert srun[:5] == ["srun", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
    assert "--on-node" in srun and srun[-4:] == ["frpo", "sft", "--spec", "{}"]
    # each node's launcher: its rank from SLURM_NODEID, the first node's address, a port from the job id
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("FRPO_MAIN_NODE", "node01")
    assert launch.launch(["frpo", "sft"], 16, "zero3", nodes=2, on_node=True) == 0
    node = calls[1]
    assert node[node.index("--machine_rank") + 1] == "1" and node[node.index("--main_process_ip") + 1] == "node01"
    assert node[node.index("--main_process_port") + 1] == str(20000 + 4242 % 20000)
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(RuntimeError, match="needs a SLURM allocation of 2 nodes"):
        launch.launch(["frpo", "sft"], 16, "zero3", nodes=2)


def test_the_schema_refuses_unknown_stages_and_strategies_by_the_lookups_names():
    bad = paper()
    bad["compute"]["sizes"]["7b"]["sft_qlora"] = {"gpus": 1}
    _invalid(bad, r"compute\.sizes\.7b: 'sft_qlora' is not one of \['rl', 'sft_lora', 'sft_full'\]")
    bad = paper()
    bad["compute"]["sizes"]["7b"]["rl"]["strategy"] = "zero9"
    _invalid(bad, r"compute\.sizes\.7b\.rl\.strategy: 'zero9' is not one of \['ddp', 'zero2', 'zero3', 'fsdp'\]")


def test_a_launcher_killed_with_sigkill_takes_its_processes_with_it(tmp_path):
    """torchrun starts its workers in sessions of their own: without frpo.launch.die_with_launcher, a `kill -9` of
    the launcher's process group would leave them running (and, in training, writing checkpoints)."""
    import os
    import signal
    import subprocess
    import time

    env = dict(os.environ, FRPO_ACCELERATE_CONFIGS=str(ROOT / "config" / "accelerate"))
    proc = subprocess.Popen([sys.executable, "-m", "frpo.cli", "launch", "--processes", "2", "--strategy", "ddp",
                             "--", str(ROOT / "tests" / "distributed" / "sleeper.py"), str(tmp_path)],
                            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list(tmp_path.glob("pid*"))) < 2:
            assert proc.poll() is None and time.time() < deadline, "the two processes never started"
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("pid*")]
        assert all(os.getpgid(pid) != proc.pid for pid in pids), "torchrun's workers have their own sessions"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.time() + 20
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "processes outlived their launcher"
