"""What a training job runs on: GPUs, nodes, processes, the distributed strategy and its SLURM resources, looked up
by the size of the model it trains (``compute.sizes`` in the config; a track names its size in ``model.size``).

Three kinds of training job: ``rl`` (rl_train), ``sft_lora`` and ``sft_full`` (warm-up and downstream
fine-tuning, by their method: full fine-tuning of a 7B model needs several GPUs where LoRA fits on one)::

    compute:
      sizes:
        7b:
          rl: {gpus: 1, mem_mb: 128000, runtime: 1440, vllm: {tensor_parallel_size: 1, gpu_memory_utilization: 0.3}}
          sft_full: {gpus: 4, strategy: zero2, mem_mb: 256000, runtime: 720}
        32b:
          sft_full: {gpus: 8, nodes: 2, strategy: zero3, ...}

A stage a size does not list, and every stage of a config without ``compute`` (the CPU demo), gets
:data:`DEFAULTS`: one process (one GPU on ``device: cuda``). A job of one process runs as a plain process; with
several, the rule starts it through ``frpo launch`` (:mod:`frpo.launch`) with the strategy's accelerate config
(``config/accelerate/<strategy>.yaml``). On ``device: cpu`` a stage may ask for ``processes`` (DDP over gloo, how
the smoke config and the tests exercise the multi-process path) and SLURM gets ``--ntasks``; on GPUs the process
count is the job's GPUs (``gpus`` per node × ``nodes``). Several nodes ask SLURM for ``--gres=gpu:<gpus>`` per node;
one node asks ``--gpus=<gpus>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULTS", "STAGES", "STRATEGIES", "Job", "check_compute", "job", "sft_stage"]

#: the kinds of training job, and what each is
STAGES = {"rl": "RL training (rl_train)", "sft_lora": "LoRA fine-tuning (warmup_sft, finetune)",
          "sft_full": "full fine-tuning (warmup_sft, finetune)"}
#: distributed strategies: their accelerate config files, relative to the repository
STRATEGIES = {name: f"config/accelerate/{name}.yaml" for name in ("ddp", "zero2", "zero3", "fsdp")}
#: the environment variable that names the repository's config/accelerate/ for `frpo launch` (the workflow sets
#: it; it is not part of a job's command, so moving the repository reruns nothing)
CONFIG_DIR_ENV = "FRPO_ACCELERATE_CONFIGS"
#: what a stage gets when the config does not say: one process, memory and runtime of a one-GPU 7B job
DEFAULTS = {"gpus": 1, "nodes": 1, "processes": 1, "cpus_per_gpu": 8, "mem_mb": 64000, "runtime": 720}


def sft_stage(method: str) -> str:
    """The job kind of a fine-tuning stage of ``method`` (lora or full)."""
    return f"sft_{method}"


@dataclass(frozen=True)
class Job:
    """One training job's placement: ``processes`` in all over ``nodes``, ``gpus`` per node (0 on the CPU)."""

    stage: str
    size: str | None
    gpus: int
    nodes: int
    processes: int
    strategy: str | None
    cpus_per_gpu: int
    mem_mb: int
    runtime: int
    vllm: dict = field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        return self.processes > 1

    def resources(self, attempt: int = 1) -> dict:
        """The Snakemake resources of the job (the SLURM plugin maps them to sbatch flags). ``runtime`` doubles on
        the retry (the profile's ``retries: 1``; training resumes from its checkpoint)."""
        multi_node = self.nodes > 1
        return {
            "gpu": 0 if multi_node else self.gpus,
            "gres": f"gpu:{self.gpus}" if multi_node and self.gpus else None,
            "nodes": self.nodes,
            # CPU-only jobs with several processes ask for them as tasks; on GPU jobs the plugin would turn `tasks`
            # into --ntasks-per-gpu, and the processes come from the GPUs
            "tasks": self.processes if not self.gpus and self.processes > 1 else None,
            # ...with one CPU each (the rule's threads would be asked for per task)
            "cpus_per_task": 1 if not self.gpus and self.processes > 1 else None,
            "cpus_per_gpu": self.cpus_per_gpu if self.gpus else None,
            "mem_mb": self.mem_mb,
            "runtime": self.runtime * attempt,
        }

    def launcher(self) -> str:
        """The command prefix that starts the job's command: empty for one process, else ``frpo launch ... -- ``
        with the strategy by name (:func:`frpo.launch.strategy_file` finds its accelerate config)."""
        if not self.distributed:
            return ""
        return f"frpo launch --processes {self.processes} --nodes {self.nodes} --strategy {self.strategy} -- "

    def record(self) -> dict:
        """What a run's spec (and so its summary) records about where it ran."""
        return {"stage": self.stage, "size": self.size, "gpus_per_node": self.gpus, "nodes": self.nodes,
                "processes": self.processes, "strategy": self.strategy}


def _entry(view: dict, stage: str) -> tuple[str | None, dict]:
    sizes = (view.get("compute") or {}).get("sizes") or {}
    size = view["model"].get("size")
    return size, dict(sizes.get(size, {}).get(stage, {})) if size else {}


def job(view: dict, stage: str) -> Job:
    """The placement of a ``stage`` job of a track (its view, :func:`frpo.config.view`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r} (known: {', '.join(STAGES)})")
    size, entry = _entry(view, stage)
    cpu = view["device"] == "cpu"
    nodes = entry.get("nodes", DEFAULTS["nodes"])
    gpus = 0 if cpu else entry.get("gpus", DEFAULTS["gpus"])
    processes = entry.get("processes", DEFAULTS["processes"]) if cpu else gpus * nodes
    strategy = entry.get("strategy", "ddp") if processes > 1 else None
    return Job(stage=stage, size=size, gpus=gpus, nodes=nodes, processes=processes, strategy=strategy,
               cpus_per_gpu=entry.get("cpus_per_gpu", DEFAULTS["cpus_per_gpu"]),
               mem_mb=entry.get("mem_mb", DEFAULTS["mem_mb"]), runtime=entry.get("runtime", DEFAULTS["runtime"]),
               vllm=dict(entry.get("vllm", {})))


def check_compute(config: dict, source: str, root: str | Path = ".") -> None:
    """What the schema cannot say about ``compute``: a track's ``model.size`` is one of ``compute.sizes``; CPU
    configs give ``processes`` and no GPUs, GPU configs give GPUs and no ``processes``; several nodes are only for
    GPU jobs; vLLM's tensor parallelism fits in one node's GPUs; the strategy's accelerate config exists."""
    from .config import ConfigError, experiment_block

    sizes = (config.get("compute") or {}).get("sizes") or {}
    cpu = config["device"] == "cpu"
    for name in config["tracks"]:
        size = experiment_block(config, name)["model"].get("size")
        if size is not None and size not in sizes:
            raise ConfigError(f"{source}: tracks.{name}.model.size: {size!r} is not one of compute.sizes "
                              f"({', '.join(sizes) or 'none configured'})")
    for size, stages in sizes.items():
        for stage, entry in stages.items():
            where = f"{source}: compute.sizes.{size}.{stage}"
            if cpu and entry.get("gpus"):
                raise ConfigError(f"{where}.gpus: device is cpu; ask for processes instead")
            if cpu and entry.get("nodes", 1) > 1:
                raise ConfigError(f"{where}.nodes: several nodes need GPUs (device: cuda)")
            if not cpu and "processes" in entry:
                raise ConfigError(f"{where}.processes: on GPUs the processes are the job's GPUs (gpus x nodes); "
                                  "remove processes")
            tp = entry.get("vllm", {}).get("tensor_parallel_size", 1)
            gpus = entry.get("gpus", DEFAULTS["gpus"])
            if not cpu and (tp > gpus or gpus % tp):
                # colocate: every group of tp processes on a node shares one vLLM engine
                raise ConfigError(f"{where}.vllm.tensor_parallel_size: {tp} must divide the job's {gpus} GPU(s) "
                                  "per node")
            strategy = entry.get("strategy")
            if strategy and not (Path(root) / STRATEGIES[strategy]).is_file():
                raise ConfigError(f"{where}.strategy: {STRATEGIES[strategy]} not found")
