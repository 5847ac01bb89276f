"""Registration and promotion survive MLflow dying at any point, and a retry completes the job
(issue 12, item 1); the gate cannot be bypassed by moving the alias by hand (item 2).

A real ``mlflow server`` (the project's, started with its CLI on a throwaway database) is killed
with SIGKILL at a chosen point of the DAG's own steps (``training.steps.gate_and_register`` and
``promote``): the client method named in the case runs (or not, for "before"), then the server's
process group is killed, so the next MLflow call meets a dead server exactly as in production. The
state left behind is read straight from MLflow's database (no server needed), the server is started
again, and the failed step is retried the way Airflow retries it, followed by the steps after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from ecom_ml import registry
from ecom_ml import settings as settings_mod
from ecom_ml.db import scratch_database
from ecom_ml.localhost import free_port, port_in_use
from ecom_ml.registry import Registry, RegistryError, UnverifiedChampion
from ecom_ml.training import steps

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

MODEL = "recommender"  # the gate config is per model name
DAY = date(2024, 1, 15)
GOOD = {"recall@10": 0.29, "ndcg@10": 0.30, "slices": {"new": {"recall@10": 0.05}, "returning": {"recall@10": 0.33}},
        "cost": {"model_bytes": 123456, "p50_ms": 2.0, "p99_ms": 9.5}}
def _with_units(result: dict) -> dict:
    """The evaluator's per-customer values (no spread) that the gate's bootstrap interval needs."""
    return {**result, "per_unit": {"unit": "customer", "digest": "d", "values": {"ndcg@10": [result["ndcg@10"]] * 100}}}


BASELINES = {"repeat_purchase": _with_units({**GOOD, "ndcg@10": 0.28})}
MLFLOW_CLI = [sys.executable, "-m", "ecom_ml.mlflow_server"]


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['ECOM_MLFLOW_PORT']}"
        self.db = env["ECOM_MLFLOW_DB_URL"]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MLFLOW_CLI, *args], env=self.env, capture_output=True, text=True, timeout=180)

    def start(self) -> None:
        done = self.cli("start")
        assert done.returncode == 0, done.stderr

    def kill(self) -> None:
        """SIGKILL the server's whole process group: no shutdown, like an OOM kill or a lost node."""
        pid = json.loads((Path(self.env["ECOM_HOME"]) / "mlflow.pid").read_text())["pid"]
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while port_in_use("127.0.0.1", int(self.env["ECOM_MLFLOW_PORT"])) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def server(pg_server: settings_mod.Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    with scratch_database(pg_server, "test_mlflow_faults") as name:
        env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
        env.update({
            "ECOM_HOME": str(tmp_path / "home"),
            "ECOM_MLFLOW_PORT": str(free_port()),
            "ECOM_MLFLOW_DB_URL": pg_server.local_url(name, "postgresql+psycopg2"),
            "ECOM_MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"),
        })
        srv = Server(env)
        srv.start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.url)
        monkeypatch.setenv("ECOM_MLFLOW_ARTIFACTS", env["ECOM_MLFLOW_ARTIFACTS"])
        monkeypatch.setenv("ECOM_MODEL_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("ECOM_MLFLOW_TIMEOUT_SECONDS", "5")
        monkeypatch.setenv("ECOM_MLFLOW_RETRIES", "1")
        try:
            yield srv
        finally:
            srv.cli("stop")


def _night(tmp_path: Path, run_id: str, ndcg: float = 0.30) -> tuple[dict, dict]:
    """What the train and evaluate tasks hand to the gate: the model folder and the evaluation."""
    out = tmp_path / "lake" / "models" / MODEL / run_id
    model_dir = out / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "recommender.keras").write_bytes(b"PK\x03\x04 not really keras " + run_id.encode())
    (model_dir / "vocab.json").write_text(json.dumps({"run": run_id}))
    trained = {"out_uri": str(out), "model_uri": str(model_dir), "params": {"epochs": 3}}
    return trained, {"candidate": _with_units({**GOOD, "ndcg@10": ndcg}), "champion": None, "baselines": BASELINES}


def _train_night(tmp_path: Path, run_id: str) -> dict:
    trained, evaluation = _night(tmp_path, run_id)
    gated = steps.gate_and_register(MODEL, DAY, run_id, trained, evaluation)
    steps.promote(MODEL, gated, run_id)
    return gated


def _versions_of(db: Registry, run_id: str) -> list:
    return [mv for mv in db.client.search_model_versions(f"name = '{MODEL}'")
            if (mv.tags or {}).get("airflow_run_id") == run_id]


# (step that fails, client method, kill the server before or after that call)
CASES = [
    ("gate", "create_run", "after"),                  # a run exists, nothing logged in it
    ("gate", "set_terminated", "after"),              # a finished run, never registered
    ("gate", "create_model_version", "after"),        # the orphan version of the issue
    ("gate", "set_model_version_tag", "after"),       # a half-written gate record
    ("promote", "set_registered_model_alias", "before"),  # nothing moved yet
    ("promote", "set_registered_model_alias", "after"),   # moved, not recorded (the case)
    ("promote", "set_registered_model_tag", "after"),     # moved and recorded, version not stamped
]


@pytest.mark.parametrize(("step", "method", "when"), CASES, ids=[f"{s}-{w}-{m}" for s, m, w in CASES])
def test_mlflow_killed_mid_step_then_the_retry_completes_it(server: Server, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            step: str, method: str, when: str):
    first = _train_night(tmp_path, "scheduled__2024-01-14")  # the champion before tonight
    assert registry.get_registry().champion_version(MODEL) == first["version"]

    run_id = "scheduled__2024-01-15"
    trained, evaluation = _night(tmp_path, run_id)
    client = registry.get_registry().client
    original = getattr(client, method)

    def faulty(*args, **kwargs):
        monkeypatch.setattr(client, method, original)  # one fault per case
        if when == "before":
            server.kill()
            return original(*args, **kwargs)
        result = original(*args, **kwargs)
        server.kill()
        return result

    gated = None
    if step == "promote":
        gated = steps.gate_and_register(MODEL, DAY, run_id, trained, evaluation)
    monkeypatch.setattr(client, method, faulty)
    started = time.monotonic()
    with pytest.raises(RegistryError) as info:
        if step == "gate":
            steps.gate_and_register(MODEL, DAY, run_id, trained, evaluation)
        else:
            steps.promote(MODEL, gated, run_id)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert f"MLflow tracking server {server.url} did not answer (connection refused; 2 tries of at most 5 s" in message
    assert elapsed < 30, f"a dead server must fail the step within the configured bounds, took {elapsed:.0f} s"

    # What was left, read from MLflow's database while the server is down.
    db = Registry(server.db, artifacts=server.env["ECOM_MLFLOW_ARTIFACTS"], cache_dir=tmp_path / "dbcache")
    left = _versions_of(db, run_id)
    if step == "gate":
        assert db.champion_version(MODEL) == first["version"], "the alias must not move before a gate record"
    check = db.verify_champion(MODEL)
    if (step, when) == ("promote", "after") and method == "set_registered_model_alias":
        assert not check.verified and "is not in the history" in check.line(), check.line()
        with pytest.raises(UnverifiedChampion, match=r"^refusing to serve recommender@champion v2 is NOT verified"):
            db.verified_champion(MODEL, download=False)
    else:
        assert check.verified, check.line()

    server.start()
    # Airflow retries the failed task, then runs the ones after it.
    retried = steps.gate_and_register(MODEL, DAY, run_id, trained, evaluation) if step == "gate" else gated
    steps.promote(MODEL, retried, run_id)

    versions = _versions_of(db, run_id)
    assert len(versions) == 1, f"one version per Airflow run, got {[v.version for v in versions]}"
    if left:
        assert int(versions[0].version) == int(left[0].version), "the retry reuses the orphan version"
    version = int(versions[0].version)
    record = db.gate_record(MODEL, version)
    assert record.complete and record.passed, record
    assert db.champion_version(MODEL) == version == retried["version"]
    events = db.history(MODEL)
    assert [(e["version"], e["previous_champion"]) for e in events] == [(first["version"], None),
                                                                        (version, first["version"])]
    tags = db.client.get_model_version(MODEL, str(version)).tags
    assert tags["ecom.promoted_at"] == events[-1]["at"] and tags["ecom.previous_champion"] == str(first["version"])
    assert tags["ecom.promoted_by"] == f"airflow:train_{MODEL}/{run_id}"
    assert db.verify_champion(MODEL).verified
    runs = db.client.search_runs([db._experiment_id(MODEL)])
    assert sum(r.info.status == "FINISHED" for r in runs) == 2, "one finished run per night"

    steps.promote(MODEL, retried, run_id)  # a further retry writes nothing
    assert len(db.history(MODEL)) == 2


def test_a_hung_server_fails_the_step_within_the_configured_timeout(server: Server, tmp_path: Path):
    """SIGSTOP: the port accepts connections but nothing answers, the worst case for a client."""
    gated = steps.gate_and_register(MODEL, DAY, "manual__1", *_night(tmp_path, "manual__1"))
    pid = json.loads((Path(server.env["ECOM_HOME"]) / "mlflow.pid").read_text())["pid"]
    os.killpg(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RegistryError) as info:
            steps.promote(MODEL, gated, "manual__1")
        elapsed = time.monotonic() - started
    finally:
        os.killpg(pid, signal.SIGCONT)
    assert "did not answer (no answer within the timeout; 2 tries of at most 5 s" in str(info.value)
    assert elapsed < 2 * 5 + 15, f"took {elapsed:.0f} s"
    steps.promote(MODEL, gated, "manual__1")
    assert registry.verify_champion(MODEL).verified



def bypass_the_gate(server: Server, tmp_path: Path) -> tuple[dict, int]:
    """A promoted champion, then a candidate that fails its gate made champion by one plain REST call
    to the MLflow server (what anyone who reaches it can do); returns (the good night, the bad version)."""
    good = _train_night(tmp_path, "scheduled__2024-01-14")
    trained, evaluation = _night(tmp_path, "scheduled__2024-01-15", ndcg=0.10)
    with pytest.raises(steps.GateFailed):
        steps.gate_and_register(MODEL, DAY, "scheduled__2024-01-15", trained, evaluation)
    bad = good["version"] + 1
    request = urllib.request.Request(
        f"{server.url}/api/2.0/mlflow/registered-models/alias", method="POST",
        data=json.dumps({"name": MODEL, "alias": "champion", "version": str(bad)}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
    return good, bad


def test_an_alias_moved_by_one_rest_call_is_flagged_and_refused(server: Server, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]):
    """The bypass of the issue: a version that failed its gate made champion over plain REST."""
    good, bad = bypass_the_gate(server, tmp_path)
    assert registry.get_registry().champion_version(MODEL) == bad

    check = registry.verify_champion(MODEL)
    assert not check.verified
    assert check.problems == (
        f"{MODEL} v{bad} failed its gate: {registry.get_registry().gate_record(MODEL, bad).summary}",
        f"the alias move to v{bad} is not in the history (the last recorded champion is v{good['version']})",
    )
    with pytest.raises(UnverifiedChampion) as info:
        registry.verified_champion(MODEL)
    assert str(info.value).startswith(f"refusing to serve {MODEL}@champion v{bad} is NOT verified: ")
    with pytest.raises(RegistryError, match=rf"^{MODEL} v{bad} cannot be promoted: {MODEL} v{bad} failed its gate"):
        registry.promote(MODEL, bad, "sneak it in", "mallory")

    # Setting the verdict tag by hand does not make it pass: the stored report has a digest.
    registry.get_registry().client.set_model_version_tag(MODEL, str(bad), "ecom.gate.passed", "true")
    assert "its gate tag says 'true', its report does not" in registry.verify_champion(MODEL).line()

    import argparse

    parser = argparse.ArgumentParser(prog="ecom-ml")
    registry.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["history", "--model", MODEL])
    assert args.func(args) == 3
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"!! {MODEL}@champion v{bad} is NOT verified: ")

    # The way back: restore the last recorded champion, which is verified again (only the registry
    # here: these versions' model folders are stand-ins that cannot predict, so nothing is republished).
    args = parser.parse_args(["rollback", "--model", MODEL, "--to-version", str(good["version"]),
                              "--reason", "champion moved outside the gate", "--no-publish"])
    assert args.func(args) == 0
    assert registry.verify_champion(MODEL).verified
    assert registry.verified_champion(MODEL, download=False).version == good["version"]


class _BasicAuthProxy:
    """HTTP basic authentication in front of the real server, as an nginx/ingress in front of a shared
    MLflow does (MLflow's own ``--app-name basic-auth`` needs Flask-WTF, not installed here; the
    client side, which is what ecom-ml controls, is the same: ``Authorization: Basic …``)."""

    def __init__(self, upstream: str, user: str, password: str) -> None:
        import base64
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        target = urlsplit(upstream)
        counts = self.counts = {"authorized": 0, "refused": 0}

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if self.headers.get("Authorization") != expected:
                    counts["refused"] += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                counts["authorized"] += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PATCH = do_DELETE = _forward  # noqa: N815 - http.server's hook names

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_a_credentialed_tracking_uri_works_and_never_shows_its_password(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]):
    import logging

    password = f"p@ss:{os.urandom(6).hex()}"  # '@' and ':' must survive the URL
    proxy = _BasicAuthProxy(server.url, "ecom", password)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    from urllib.parse import quote

    uri = f"http://ecom:{quote(password, safe='')}@127.0.0.1:{proxy.port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        with caplog.at_level(logging.DEBUG):
            gated = steps.gate_and_register(MODEL, DAY, "manual__creds", *_night(tmp_path, "manual__creds"))
            steps.promote(MODEL, gated, "manual__creds")
            assert registry.verified_champion(MODEL, download=True).version == gated["version"]
        assert proxy.counts["authorized"] > 5 and proxy.counts["refused"] == 0, proxy.counts

        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ecom:wrong-{quote(password, safe='')}@127.0.0.1:{proxy.port}")
        with pytest.raises(RegistryError) as info:
            Registry(cache_dir=tmp_path / "c2")
        assert str(info.value) == (f"MLflow tracking server http://ecom:***@127.0.0.1:{proxy.port} is not reachable "
                                   f"(HTTP 401): check MLFLOW_TRACKING_URI")
    finally:
        proxy.close()
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, str(info.value)):
        assert password not in text and quote(password, safe="") not in text
