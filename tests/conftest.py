"""Shared test setup: offline Hugging Face libraries, a loopback fake HTTP server, and the tiny FRPO trainer."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# The whole session runs offline: nothing may reach the Hugging Face Hub (set before any test module imports it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

G = 4  # completions per prompt in the tiny trainer


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: runs the workflow on a real single-node SLURM cluster started by tests/slurm/cluster.sh "
        "(root only; set FRPO_SLURM_TESTS=1)")


# --------------------------------------------------------------------------------------------------------------
# A fake JSON-over-HTTP server on 127.0.0.1 (a real HTTP round trip, no network)


class _FakeHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            scripted = srv.script.pop(0) if srv.script else None
        status, payload = scripted if scripted is not None else srv.respond(srv, body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_http():
    """Start fake servers: ``fake_http(respond)`` returns ``(server, base_url)``, base_url ending in ``/v1``.

    Every POST's JSON body is recorded in ``server.requests`` (``{"path", "auth", "body"}``). The reply is the next
    ``(status, bytes)`` of ``server.script`` while it has one, else ``respond(server, body) -> (status, bytes)``.
    Servers are shut down when the test ends.
    """
    servers = []

    def start(respond):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHandler)
        srv.respond, srv.requests, srv.script, srv.lock = respond, [], [], threading.Lock()
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
        return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# --------------------------------------------------------------------------------------------------------------
# The tiny FRPO trainer on the toy task (test_trainer.py, test_guards.py)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from frpo.tiny import save_tiny_model
    from frpo.toy import VOCAB

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny"), VOCAB, hidden_size=32, num_heads=2, seed=0))


def make_config(tmp_path, **overrides):
    from frpo.trainer import FRPOConfig

    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2 * G,
        num_generations=G,
        max_completion_length=6,
        max_steps=2,
        learning_rate=5e-3,
        beta=0.05,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return FRPOConfig(**kwargs)


def make_trainer(model_dir, config, callbacks=None):
    from transformers import AutoTokenizer

    from frpo.toy import toy_dataset, toy_reward
    from frpo.trainer import FRPOTrainer

    return FRPOTrainer(
        model=model_dir,
        reward_funcs=toy_reward,
        args=config,
        train_dataset=toy_dataset(),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=callbacks,
    )
