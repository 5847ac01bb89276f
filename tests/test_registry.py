"""Tracking + registry on the real local PostgreSQL, and the project's `mlflow server` start/stop.

Each module run gets its own throwaway database on the project's server (never the reserved
``mlflow`` one) and its own artifact/cache folders, so parallel or repeated runs do not collide.
Most tests talk to the database store directly (no server per test); the server test then runs the
same registry calls through a real ``mlflow server`` started with the CLI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecom_ml import mlflow_server, registry
from ecom_ml import settings as settings_mod
from ecom_ml.gate import evaluate_gate
from ecom_ml.localhost import free_port
from ecom_ml.registry import Registry, RegistryError

# MLflow's own SQLAlchemy usage warns on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

METRICS = {
    "recall@10": 0.291,
    "ndcg@10": 0.301,
    "slices": {"new": {"recall@10": 0.05}, "returning": {"recall@10": 0.33}},
    "cost": {"model_bytes": 123456, "p50_ms": 2.0, "p99_ms": 9.5},
}


@pytest.fixture(scope="module")
def mlflow_db(pg_server: settings_mod.Settings, scratch_dbs) -> str:
    """SQLAlchemy URL of a fresh database for this module; dropped afterwards."""
    return pg_server.local_url(scratch_dbs("mlflow")["mlflow"], "postgresql+psycopg2")


@pytest.fixture(scope="module")
def reg(mlflow_db: str, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("registry")
    return Registry(mlflow_db, artifacts=(root / "artifacts").as_uri(), cache_dir=root / "cache")


def _model_dir(root: Path, marker: str) -> Path:
    """What the trainer writes to <out>/model/: a .keras file and JSON."""
    folder = root / marker / "model"
    folder.mkdir(parents=True)
    (folder / "recommender.keras").write_bytes(b"PK\x03\x04 fake keras zip " + marker.encode())
    (folder / "vocab.json").write_text(json.dumps({"marker": marker, "items": ["A", "B"]}))
    return folder


def _metrics(ndcg: float) -> dict:
    return {**METRICS, "ndcg@10": ndcg}


def _with_units(result: dict) -> dict:
    """The evaluator's per-customer values (no spread) that the gate's bootstrap interval needs."""
    return {**result, "per_unit": {"unit": "customer", "digest": "d", "values": {"ndcg@10": [result["ndcg@10"]] * 100}}}


BASELINES = {"repeat_purchase": _with_units({**METRICS, "ndcg@10": 0.28})}


def _report(ndcg: float) -> dict:
    """The recommender gate's report for a candidate with this NDCG@10 (passes from about 0.286)."""
    return evaluate_gate("recommender", _with_units(_metrics(ndcg)), None, BASELINES).to_dict()


def test_log_candidate_registers_a_version_with_files_params_and_metrics(reg: Registry, tmp_path: Path):
    model = "reco_log"
    assert reg.champion(model) is None, "no registered model yet: no champion"
    first = reg.log_candidate(model, "reco-2024-01-15", {"epochs": 3, "dims": [64, 32]}, _metrics(0.30),
                              _model_dir(tmp_path, "v1"), tags={"dt": "2024-01-15"})
    second = reg.log_candidate(model, "reco-2024-01-16", {"epochs": 3}, _metrics(0.31), _model_dir(tmp_path, "v2"))
    assert (first.version, second.version) == (1, 2)
    assert first.model_uri == f"models:/{model}/1" and first.model_name == model

    run = reg.client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "reco-2024-01-15"
    assert run.data.params == {"epochs": "3", "dims": "[64, 32]"}
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(0.30)
    assert run.data.metrics["slices.new.recall_at_10"] == pytest.approx(0.05)
    assert run.data.tags["dt"] == "2024-01-15"
    mv = reg.client.get_model_version(model, "1")
    assert mv.source.endswith("/model") and mv.run_id == first.run_id and mv.tags["dt"] == "2024-01-15"
    assert reg.champion(model) is None, "registering is not promoting"


def test_promote_rollback_and_history(reg: Registry, tmp_path: Path):
    model = "reco_flow"
    v1 = reg.log_candidate(model, "run-1", {}, _metrics(0.30), _model_dir(tmp_path, "v1"), gate_report=_report(0.30))
    v2 = reg.log_candidate(model, "run-2", {}, _metrics(0.31), _model_dir(tmp_path, "v2"), gate_report=_report(0.31))
    v3 = reg.log_candidate(model, "run-3", {}, _metrics(0.25), _model_dir(tmp_path, "v3"), gate_report=_report(0.25))

    reg.promote(model, v1.version, "first model beats the baselines", "airflow:recommender_training")
    assert reg.champion_version(model) == 1
    reg.promote(model, v2.version, "gate passed: ndcg@10 0.31", "airflow:recommender_training")
    reg.promote(model, v2.version, "re-run of the same day", "airflow:recommender_training")  # no-op

    champ = reg.champion(model)
    assert champ is not None and champ.version == 2 and champ.run_id == v2.run_id
    assert champ.metrics == _metrics(0.31), "the evaluation dict comes back as logged, nested"
    assert champ.promoted_by == "airflow:recommender_training" and champ.since
    assert champ.path is not None and json.loads((champ.path / "vocab.json").read_text())["marker"] == "v2"
    assert (champ.path / "recommender.keras").is_file()
    assert reg.champion(model).path == champ.path, "cached by run id: no second download"
    tags = reg.client.get_model_version(model, "2").tags
    assert tags["ecom.previous_champion"] == "1" and tags["ecom.promotion_reason"] == "gate passed: ndcg@10 0.31"

    result = reg.rollback(model, None, "bad recommendations on the home page", "alice")
    assert (result.from_version, result.to_version, result.actor) == (2, 1, "alice")
    assert reg.champion_version(model) == 1
    v1_tags = reg.client.get_model_version(model, "1").tags
    assert v1_tags["ecom.promoted_by"] == "alice" and v1_tags["ecom.last_action"] == "rollback"

    events = reg.history(model)
    assert [(e["action"], e["version"], e["previous_champion"]) for e in events] == [
        ("promote", 1, None), ("promote", 2, 1), ("rollback", 1, 2)
    ], "the no-op promotion writes no event"
    assert events[-1]["actor"] == "alice" and events[-1]["reason"] == "bad recommendations on the home page"
    assert all(e["at"] and e["model"] == model for e in events)

    with pytest.raises(RegistryError) as info:
        reg.rollback(model, None, "again", "alice")
    assert str(info.value) == f"{model}: no earlier champion on record before v1; nothing to roll back to"

    with pytest.raises(RegistryError) as info:
        reg.rollback(model, 9, "typo", "bob")
    assert str(info.value) == f"{model} has no version 9 (existing versions: 1, 2, 3)"

    with pytest.raises(RegistryError, match=rf"^{model} v3 was never champion: rollback only returns"):
        reg.rollback(model, v3.version, "try the new one", "bob")
    with pytest.raises(RegistryError, match=rf"^{model} v1 is already the champion$"):
        reg.rollback(model, 1, "noop", "bob")

    back = reg.rollback(model, 2, "the page bug was elsewhere", "carol")  # explicit: v2 was champion before
    assert (back.from_version, back.to_version) == (1, 2) and reg.champion_version(model) == 2
    assert len(reg.history(model)) == 4


def test_refusals_are_one_line(reg: Registry, tmp_path: Path):
    model = "reco_refuse"
    with pytest.raises(RegistryError, match=r"^there is no registered model 'reco_refuse'$"):
        reg.rollback(model, None, "why", "me")
    cand = reg.log_candidate(model, "run-1", {}, _metrics(0.3), _model_dir(tmp_path, "v1"))
    with pytest.raises(RegistryError, match=r"^reco_refuse has no champion to roll back from$"):
        reg.rollback(model, None, "why", "me")
    with pytest.raises(RegistryError, match=r"^reco_refuse has no version 5 \(existing versions: 1\)$"):
        reg.promote(model, 5, "why", "me")
    with pytest.raises(RegistryError, match="a reason is required"):
        reg.promote(model, cand.version, "  ", "me")
    with pytest.raises(RegistryError, match="does not exist"):
        reg.log_candidate(model, "run-2", {}, {}, tmp_path / "nowhere")
    with pytest.raises(RegistryError, match="is not a valid model name"):
        reg.champion("../etc")


def test_attach_gate_report_stores_json_markdown_and_verdict(reg: Registry, tmp_path: Path):
    model = "reco_gate"
    baselines = BASELINES
    report = evaluate_gate("recommender", _with_units(_metrics(0.30)), None, baselines)
    cand = reg.log_candidate(model, "run-1", {}, _metrics(0.30), _model_dir(tmp_path, "v1"),
                             gate_report=report.to_dict())
    mv = reg.client.get_model_version(model, str(cand.version))
    assert mv.tags["ecom.gate.passed"] == "true"
    assert mv.tags["ecom.gate.summary"] == report.summary_line()
    assert mv.description.startswith("## Gate PASSED")
    local = reg.client.download_artifacts(cand.run_id, "gate", str(tmp_path))
    assert json.loads(Path(local, "gate_report.json").read_text())["passed"] is True
    assert Path(local, "gate_report.md").read_text() == report.to_markdown()

    failing = evaluate_gate("recommender", _with_units(_metrics(0.10)), None, baselines)
    reg.attach_gate_report(cand.version, failing, model_name=model)  # number + model name form
    assert reg.client.get_model_version(model, "1").tags["ecom.gate.passed"] == "false"


def test_log_candidate_copies_a_remote_model_folder(reg: Registry):
    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"/ecom-{uuid.uuid4().hex[:6]}/out/model"
    fs.pipe({f"{base}/recommender.keras": b"keras", f"{base}/meta.json": b"{}"})
    cand = reg.log_candidate("reco_remote", "run-1", {}, _metrics(0.3), f"memory://{base}")
    files = {info.path for info in reg.client.list_artifacts(cand.run_id, "model")}
    assert files == {"model/recommender.keras", "model/meta.json"}


def test_module_api_and_rollback_cli_use_the_configured_tracking_uri(
    mlflow_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    monkeypatch.setenv("ECOM_MLFLOW_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("ECOM_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("USER", "dana")
    model = "reco_cli"
    for n in (1, 2):
        cand = registry.log_candidate(model, f"run-{n}", {}, _metrics(0.3), _model_dir(tmp_path, f"v{n}"),
                                      gate_report=_report(0.3))
        registry.promote(model, cand.version, f"promotion {n}", "airflow")
    assert registry.get_registry().uri == mlflow_db

    import argparse

    parser = argparse.ArgumentParser(prog="ecom-ml")
    registry.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rollback", "--model", model, "--reason", "customer complaints"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip().startswith(f"{model}: champion v2 -> v1 (rollback by dana at ")
    last = registry.history(model)[-1]
    assert (last["action"], last["version"], last["actor"], last["reason"]) == ("rollback", 1, "dana",
                                                                                "customer complaints")
    args = parser.parse_args(["history", "--model", model])
    assert args.func(args) == 0 and len(capsys.readouterr().out.strip().splitlines()) == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["rollback", "--model", model, "--to-version", "0", "--reason", "x"])


def test_unreachable_tracking_uri_is_one_line_fast():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(RegistryError) as info:
        Registry(f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    assert str(info.value).startswith(f"MLflow tracking server http://127.0.0.1:{port} is not reachable (")
    with pytest.raises(RegistryError, match=r"^MLflow's database postgresql\+psycopg2://postgres@127.0.0.1:1/x "
                                            r"is not reachable .*: start it with `ecom-ml db start`"):
        Registry("postgresql+psycopg2://postgres@127.0.0.1:1/x")


# ---- the project's mlflow server -----------------------------------------------------------------


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for init to reap it counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


#: The same parser and handlers `ecom-ml mlflow …` uses (registry.add_cli -> mlflow_server.add_cli).
MLFLOW_CLI = [sys.executable, "-m", "ecom_ml.mlflow_server"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MLFLOW_CLI, *args], env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def server_env(mlflow_db: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update({
        "ECOM_HOME": str(tmp_path / "home"),
        "ECOM_MLFLOW_PORT": str(free_port()),
        "ECOM_MLFLOW_DB_URL": mlflow_db,
        "ECOM_MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"),
    })
    yield env
    _cli(env, "stop")  # never leave a server behind, whatever the test did


def test_mlflow_server_start_status_stop(server_env: dict[str, str], tmp_path: Path):
    port = server_env["ECOM_MLFLOW_PORT"]
    url = f"http://127.0.0.1:{port}"
    assert _cli(server_env, "status").returncode == 3

    started = _cli(server_env, "start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("running (healthy, pid ") and f"MLflow UI: {url}" in started.stdout
    pid_path = Path(server_env["ECOM_HOME"]) / "mlflow.pid"
    pid = json.loads(pid_path.read_text())["pid"]

    again = _cli(server_env, "start")
    assert again.returncode == 0 and json.loads(pid_path.read_text())["pid"] == pid, "start is idempotent"
    status = _cli(server_env, "status")
    assert status.returncode == 0 and f"pid {pid}, {url}" in status.stdout
    assert _cli(server_env, "url").stdout.strip() == url, "with no MLFLOW_TRACKING_URI the pipeline uses it"

    # The pipeline's calls work through the server, artifacts land under ECOM_MLFLOW_ARTIFACTS.
    through_server = Registry(url, cache_dir=tmp_path / "cache")
    cand = through_server.log_candidate("reco_server", "run-1", {"k": 1}, _metrics(0.3), _model_dir(tmp_path, "s1"),
                                        gate_report=_report(0.3))
    through_server.promote("reco_server", cand.version, "first", "test")
    champ = through_server.champion("reco_server")
    assert champ is not None and champ.metrics == _metrics(0.3) and (champ.path / "vocab.json").is_file()
    assert list((tmp_path / "artifacts").rglob("recommender.keras")), "file:// artifact root, not a proxy"

    stopped = _cli(server_env, "stop")
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped")
    assert _cli(server_env, "status").returncode == 3 and not pid_path.exists()
    assert _gone(pid), f"server process {pid} still running after stop"
    assert _cli(server_env, "stop").returncode == 0, "stopping a stopped server is a no-op"


def test_mlflow_server_refuses_a_taken_port(server_env: dict[str, str]):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(server_env["ECOM_MLFLOW_PORT"])))
        squatter.listen()
        done = _cli(server_env, "start")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"ecom-ml: error: port {server_env['ECOM_MLFLOW_PORT']} on 127.0.0.1 is already in use by another "
        f"program: stop it or choose another port with ECOM_MLFLOW_PORT"
    )
    assert not (Path(server_env["ECOM_HOME"]) / "mlflow.pid").exists()


def test_mlflow_server_start_without_its_database_is_one_line(server_env: dict[str, str], pg_server):
    server_env["ECOM_MLFLOW_DB_URL"] = pg_server.local_url("no_such_db_for_mlflow", "postgresql+psycopg2")
    done = _cli(server_env, "start")
    assert done.returncode == 2
    message = done.stderr.strip()
    assert "\n" not in message and message.startswith(
        f"ecom-ml: error: MLflow's database {mlflow_server.redact(server_env['ECOM_MLFLOW_DB_URL'])} is not reachable (")
    assert pg_server.pg_password not in message, "the password is masked"
    assert message.endswith("start it with `ecom-ml db start` (or fix ECOM_MLFLOW_DB_URL)")


def test_tracking_uri_prefers_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ECOM_MLFLOW_PORT", "55123")
    assert mlflow_server.tracking_uri() == "http://127.0.0.1:55123"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert mlflow_server.tracking_uri() == "http://mlflow:5000"
    monkeypatch.setenv("ECOM_MLFLOW_PORT", "http")
    with pytest.raises(settings_mod.ConfigError, match=r"^ECOM_MLFLOW_PORT='http' is not an integer$"):
        mlflow_server.mlflow_port()
