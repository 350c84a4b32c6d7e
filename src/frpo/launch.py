"""Starting a training stage on several processes: ``frpo launch ... -- frpo rl --spec ...``.

A job whose resources (:mod:`frpo.compute`) give it one process runs its command as a plain process: the rules
then call ``frpo rl`` directly and never come here. A job with several processes is started by ``accelerate
launch`` (an existing engine: DDP, DeepSpeed ZeRO or FSDP, as the accelerate config file under
``config/accelerate/`` says), one process per GPU, or per CPU slot on a CPU-only machine, where the same config
runs DDP over gloo (that is how the tests run two processes).

Several nodes (a SLURM allocation with ``--nodes=M``): the Snakemake job itself runs on the allocation's first
node, so ``frpo launch`` starts one launcher per node with ``srun --overlap --nodes=M --ntasks-per-node=1``;
each runs ``accelerate launch --num_machines M --machine_rank $SLURM_NODEID --main_process_ip <first node>``
with a port all nodes derive from the job id.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["accelerate_command", "die_with_launcher", "launch", "main_port", "strategy_file", "target_command"]


def die_with_launcher() -> None:
    """In a process that ``accelerate launch`` started: die when the launcher dies. torchrun starts its workers in
    sessions of their own, so a launcher killed with SIGKILL (a user's ``kill -9`` of snakemake's process group, an
    out-of-memory kill) would leave them training and writing into the checkpoint directory that the rerun resumes
    from. Linux's parent-death signal kills them with it. (Under SLURM the job's cgroup is killed whole anyway.)"""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the signal was armed
        os._exit(1)


def strategy_file(strategy: str) -> Path:
    """The accelerate config of a strategy: a ``.yaml`` path as given, or a name (ddp, zero2, zero3, fsdp) looked
    up in ``$FRPO_ACCELERATE_CONFIGS`` (set by the workflow to its repository's config/accelerate/), else in
    ./config/accelerate/."""
    from .compute import CONFIG_DIR_ENV, STRATEGIES

    if strategy.endswith((".yaml", ".yml")):
        path = Path(strategy)
    elif strategy in STRATEGIES:
        path = Path(os.environ.get(CONFIG_DIR_ENV, "config/accelerate")) / f"{strategy}.yaml"
    else:
        raise ValueError(f"frpo launch: --strategy {strategy!r}: a name among {', '.join(STRATEGIES)} or a .yaml file")
    if not path.is_file():
        raise FileNotFoundError(f"frpo launch: accelerate config {path} (strategy {strategy!r}) not found")
    return path.resolve()


def target_command(command: list[str]) -> list[str]:
    """What ``accelerate launch`` starts in every process: ``frpo SUB ...`` as the module ``frpo.cli``, a ``.py``
    script as itself."""
    if not command:
        raise ValueError("frpo launch: no command after '--' (e.g. -- frpo rl --spec ...)")
    if command[0] == "frpo":
        return ["-m", "frpo.cli", *command[1:]]
    if command[0].endswith(".py"):
        return command
    raise ValueError(f"frpo launch: the command must be `frpo <stage> ...` or a .py script, got {command[0]!r}")


def main_port(job_id: str | None = None) -> int:
    """The rendezvous port: derived from the SLURM job id when there is one (every node computes the same), else a
    free local port."""
    if job_id:
        return 20000 + int(job_id) % 20000
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(command: list[str], processes: int, config_file: str | Path, nodes: int = 1,
                       machine_rank: int = 0, main_ip: str | None = None, port: int | None = None) -> list[str]:
    """The ``accelerate launch`` command line of one node: ``processes`` processes in all (over ``nodes``)."""
    if processes < 2:
        raise ValueError(f"frpo launch: --processes {processes}: a job of one process runs as a plain process")
    if processes % nodes:
        raise ValueError(f"frpo launch: {processes} processes cannot be spread evenly over {nodes} nodes")
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
           "--config_file", str(config_file), "--num_processes", str(processes),
           "--num_machines", str(nodes), "--machine_rank", str(machine_rank),
           "--main_process_port", str(port or main_port())]
    if nodes > 1:
        if not main_ip:
            raise ValueError("frpo launch: several nodes need the main node's address")
        cmd += ["--main_process_ip", main_ip, "--same_network"]
    return cmd + target_command(command)


def _first_node() -> str:
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def launch(command: list[str], processes: int, strategy: str, nodes: int = 1, on_node: bool = False) -> int:
    """Run ``command`` on ``processes`` processes (``nodes`` nodes) with ``strategy`` (:func:`strategy_file`);
    returns the exit status."""
    config_file = strategy_file(strategy)
    if nodes == 1:
        cmd = accelerate_command(command, processes, config_file)
    elif on_node:  # one of the per-node launchers that srun started below
        cmd = accelerate_command(command, processes, config_file, nodes, int(os.environ["SLURM_NODEID"]),
                                 os.environ["FRPO_MAIN_NODE"], main_port(os.environ["SLURM_JOB_ID"]))
    else:
        if "SLURM_JOB_ID" not in os.environ:
            raise RuntimeError(f"frpo launch: --nodes {nodes} needs a SLURM allocation of {nodes} nodes")
        os.environ["FRPO_MAIN_NODE"] = _first_node()
        cmd = ["srun", "--overlap", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
               sys.executable, "-m", "frpo.cli", "launch", "--on-node", "--processes", str(processes),
               "--nodes", str(nodes), "--strategy", str(config_file), "--", *command]
    print("frpo launch:", shlex.join(cmd), flush=True)
    return subprocess.call(cmd)
