"""Live training curves (spec["report_to"]): TensorBoard event files next to a run's checkpoints, holding the
values the Trainer logged, step by step; W&B's settings from the spec; nothing when report_to is absent.

Two tiny 2-step runs (FRPO and GRPO) share one module fixture; the rest checks the arguments only."""

from __future__ import annotations

import os
import sys
import types

import pytest

from conftest import make_config, make_trainer
from frpo.training import common_training_args, run_name

SECTION = {"learning_rate": 5e-3, "save_steps": 1000}  # no checkpoint in two steps
ENV = ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY")


@pytest.fixture
def clean_env(monkeypatch):
    """common_training_args sets the callbacks' environment: restore it after each test."""
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """objective -> (ckpt_dir, log_history, scalars of <ckpt_dir>/tensorboard) of a 2-step run with TensorBoard."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for key in ENV:
            mp.delenv(key, raising=False)
        for objective in ("frpo", "grpo"):
            tmp = tmp_path_factory.mktemp(objective)
            ckpt = tmp / "ckpt"
            spec = {"device": "cpu", "seed": 0, "track": "toy", "run": objective, "report_to": ["tensorboard"]}
            args = common_training_args(SECTION, spec, ckpt)
            config = make_config(tmp, **{**args, "disable_tqdm": True}, objective=objective)
            trainer = make_trainer(tiny_model_dir, config)
            trainer.train()
            out[objective] = (ckpt, trainer.state.log_history, _scalars(ckpt / "tensorboard"))
    return out


@pytest.mark.parametrize("objective", ["frpo", "grpo"])
def test_tensorboard_holds_each_logged_step_next_to_the_checkpoints(runs, objective):
    ckpt, history, scalars = runs[objective]
    assert (ckpt / "tensorboard").is_dir() and not (ckpt / "runs").exists()  # not transformers' dated default
    assert list((ckpt / "tensorboard").glob("events.out.tfevents.*"))
    # the Trainer's TensorBoardCallback prefixes every training log key with "train/"
    wanted = ["train/kl", "train/reward", "train/rewards/toy_reward/mean", "train/loss"]
    if objective == "frpo":
        wanted += ["train/frpo/robust_reward", "train/frpo/lambda"]
    else:
        assert not any(tag.startswith("train/frpo/robust_reward") for tag in scalars)
    steps = [h for h in history if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    for tag in wanted:
        key = tag.removeprefix("train/")
        expected = [(h["step"], h[key]) for h in history if key in h]
        assert len(expected) == 2, (tag, history)
        got = scalars.get(tag)
        assert got is not None, f"{tag} not among {sorted(scalars)}"
        assert [s for s, _ in got] == [s for s, _ in expected], tag  # one value per logged step
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6, abs=1e-7), tag


def test_frpo_and_grpo_curves_differ_where_the_objective_does(runs):
    """The two runs share model, data and seed: the FRPO-only tags are the difference, so a writer that dropped
    FRPO's metrics (or wrote GRPO's into FRPO's folder) shows here."""
    frpo, grpo = set(runs["frpo"][2]), set(runs["grpo"][2])
    only_frpo = {t for t in frpo - grpo if t.startswith("train/frpo/")}
    assert only_frpo >= {"train/frpo/robust_reward", "train/frpo/ess"}


def test_no_report_to_means_no_curves(clean_env, tmp_path):
    args = common_training_args(SECTION, {"device": "cpu", "seed": 0}, tmp_path / "ckpt")
    assert args["report_to"] == []
    for key in ENV:
        assert key not in os.environ, key
    assert not (tmp_path / "ckpt").exists()


def test_unknown_reporter_is_named(clean_env, tmp_path):
    with pytest.raises(ValueError, match=r"report_to: unknown 'mlflow' \(known: tensorboard, wandb\)"):
        common_training_args(SECTION, {"report_to": ["tensorboard", "mlflow"]}, tmp_path)
    with pytest.raises(ValueError, match="report_to: expected a list"):
        common_training_args(SECTION, {"report_to": "tensorboard"}, tmp_path)


def test_wandb_without_its_package_names_report_to_and_the_package(clean_env, tmp_path):
    clean_env.setitem(sys.modules, "wandb", None)  # not importable, whether or not it is installed here
    with pytest.raises(ImportError, match=r"report_to: 'wandb' needs .*pip install wandb"):
        common_training_args(SECTION, {"report_to": ["wandb"], "wandb": {"project": "p"}}, tmp_path)


def test_wandb_settings_come_from_the_spec(clean_env, tmp_path):
    clean_env.setitem(sys.modules, "wandb", types.ModuleType("wandb"))  # importable; never contacted here
    ckpt = tmp_path / "results" / "demo" / ".ckpt" / "safety" / "rl" / "frpo_lam0.2" / "seed1"
    spec = {"track": "safety", "run": "frpo_lam0.2", "seed": 1, "report_to": ["tensorboard", "wandb"],
            "wandb": {"project": "frpo-repro", "entity": "lab"}}
    args = common_training_args(SECTION, spec, ckpt)
    assert args["report_to"] == ["tensorboard", "wandb"]
    assert args["run_name"] == "demo/safety/rl/frpo_lam0.2/seed1"
    assert os.environ["WANDB_PROJECT"] == "frpo-repro" and os.environ["WANDB_ENTITY"] == "lab"
    assert os.environ["WANDB_DIR"] == str(ckpt.resolve()) and ckpt.is_dir()
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(ckpt.resolve() / "tensorboard")


def test_run_name_outside_the_workflow_comes_from_the_spec(tmp_path):
    spec = {"track": "math", "run": "grpo", "seed": 0}
    assert run_name(spec, tmp_path / "ck") == "math/grpo/seed0"
    assert run_name({"track": "safety", "setting": "lora_lr1e-4_ep1", "seed": 2}, tmp_path / "ck") == \
        "safety/lora_lr1e-4_ep1/seed2"
    assert run_name({}, tmp_path / "ck") == "ck"
