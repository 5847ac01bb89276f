"""`ecom-ml serve` serves only a verified champion, by version (issue 12 point 2, issue 17 point 3).

A real MLflow server and registry (the fixtures and helpers of ``tests/test_registry_faults.py``:
a scratch PostgreSQL database, versions registered and promoted by the DAG's own steps). The model
folders are stand-ins that cannot predict, so ``mlflow models serve`` itself is not started here:
``os.execve`` is replaced to capture the command it would become (the real server answering
``/invocations`` through ``ecom-ml serve`` is ``tests/test_night.py``). The regression reference of
the ``evaluate`` step (``steps.reference_champion``) is checked against the same registry.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from test_registry_faults import MODEL, Server, _train_night, bypass_the_gate, server  # noqa: F401 - fixture

from ecom_ml import cli, registry
from ecom_ml.training import steps

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

HOLDOUT_START = datetime(2024, 1, 9, tzinfo=timezone.utc)


class Execed(Exception):
    """Raised by the stand-in for os.execve: the command ``ecom-ml serve`` would have become."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(argv[0])
        self.argv, self.env = argv, env


def _capture_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        raise Execed(list(argv), dict(env))

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)  # `serve` sets it


def _serve(*args: str) -> int:
    return cli.main(["serve", "--model", MODEL, *args])


def test_no_champion_then_a_verified_champion_is_served_by_its_version(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    _capture_exec(monkeypatch)
    assert _serve("--print-uri") == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"ecom-ml: error: {MODEL} has no champion: nothing to serve\n"
    assert _serve() == 2  # refused before anything is started
    assert capsys.readouterr().err == f"ecom-ml: error: {MODEL} has no champion: nothing to serve\n"
    assert steps.reference_champion(MODEL, HOLDOUT_START) == (None, None)

    first = _train_night(tmp_path, "scheduled__2024-01-14")
    second = _train_night(tmp_path, "scheduled__2024-01-15")
    assert registry.verify_champion(MODEL).verified
    capsys.readouterr()  # MLflow's "View run" lines
    assert _serve("--print-uri") == 0
    assert capsys.readouterr().out == f"models:/{MODEL}/{second['version']}\n"

    with pytest.raises(Execed) as run:
        _serve("--port", "5123", "--host", "0.0.0.0")
    assert run.value.argv == [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}/{second['version']}",
                              "--env-manager", "local", "--host", "0.0.0.0", "--port", "5123"]
    env = run.value.env
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)  # uvicorn is found
    assert (Path(env["PYTHONPATH"].split(os.pathsep)[0]) / "ecom_ml" / "serving.py").is_file()
    assert env["MLFLOW_TRACKING_URI"] == server.url
    assert f"serving {MODEL} champion models:/{MODEL}/{second['version']} (verified" in capsys.readouterr().err

    # After a rollback the served version follows the recorded champion, not the newest one.
    assert cli.main(["rollback", "--model", MODEL, "--reason", "test", "--no-publish"]) == 0
    capsys.readouterr()
    assert _serve("--print-uri") == 0
    assert capsys.readouterr().out == f"models:/{MODEL}/{first['version']}\n"

    # A verified champion is today's regression reference (here set aside only because the
    # stand-in folder records no training cutoff, the overlap rule's own "cannot rule out").
    champion, unusable = steps.reference_champion(MODEL, HOLDOUT_START)
    assert champion.version == first["version"] and champion.path is not None
    assert unusable.startswith("its training cutoff is not recorded")


def test_an_alias_moved_by_one_rest_call_is_not_served_nor_the_regression_reference(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    _capture_exec(monkeypatch)
    good, bad = bypass_the_gate(server, tmp_path)

    summary = registry.get_registry().gate_record(MODEL, bad).summary
    problems = (f"{MODEL} v{bad} failed its gate: {summary}; the alias move to v{bad} is not in the history "
                f"(the last recorded champion is v{good['version']})")
    capsys.readouterr()  # what the test's own reads printed (MLflow's download bars) is not the command's
    for args in (("--print-uri",), ("--port", "5123")):
        assert _serve(*args) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (f"ecom-ml: error: refusing to serve {MODEL}@champion v{bad} is NOT verified: {problems}: "
                       f"promote a version through the gate, or `ecom-ml rollback --model {MODEL}` to the last "
                       f"recorded champion\n")

    champion, unusable = steps.reference_champion(MODEL, HOLDOUT_START)
    assert champion.version == bad and champion.path is None  # not even downloaded
    assert unusable == f"it is not verified ({problems}), so it is not a regression reference"
