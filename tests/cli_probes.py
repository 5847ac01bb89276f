"""Airflow's and MLflow's own command-line parsers as test oracles, each in a clean child process.

The deployment files (docker-compose.yaml, include/k8s/) name `airflow …` and `mlflow …` commands
that only run inside images; these probes check them with the very parsers those commands meet,
in a child process with its own AIRFLOW_HOME so the test session's configuration does not leak in.
Results are keyed by ``json.dumps(argv)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus anything that configures Airflow or MLflow (conftest
    sets some), so a probe sees the tools' own defaults."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_", "MLFLOW_")) and key != "AIRFLOW_HOME"
    }
    env.update(extra)
    return env


_AIRFLOW_PROBE = textwrap.dedent(
    """
    import contextlib, importlib, io, json, sys
    request = json.load(sys.stdin)
    from airflow.cli.cli_parser import get_parser
    from airflow.models.connection import Connection
    parser = get_parser()
    result = {"argv": {}, "modules": {}, "connections": {}}
    for argv in request["argv"]:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
            result["argv"][json.dumps(argv)] = None
        except SystemExit:
            result["argv"][json.dumps(argv)] = (err.getvalue().strip().splitlines() or ["?"])[-1]
    for module, attribute in request["modules"]:
        try:
            result["modules"][module] = None if hasattr(importlib.import_module(module), attribute) \\
                else f"{module} has no attribute {attribute}"
        except Exception as exc:
            result["modules"][module] = f"{type(exc).__name__}: {exc}"
    for conn_id, uri in request["connections"].items():
        c = Connection(conn_id=conn_id, uri=uri)
        result["connections"][conn_id] = {
            "conn_type": c.conn_type, "host": c.host, "port": c.port,
            "login": c.login, "password": c.password, "schema": c.schema,
        }
    print(json.dumps(result))
    """
)


def run_airflow_probe(request: dict[str, Any], tmp_path: Path, executor: str) -> dict[str, Any]:
    """Airflow's own parser and models, in a child process with its own AIRFLOW_HOME."""
    env = clean_env(
        AIRFLOW_HOME=str(tmp_path / "airflow-home"),
        AIRFLOW__CORE__EXECUTOR=executor,
        AIRFLOW__CORE__LOAD_EXAMPLES="false",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _AIRFLOW_PROBE],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"Airflow probe failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


_MLFLOW_PROBE = textwrap.dedent(
    """
    import json, sys
    import click
    from mlflow.cli import cli
    from mlflow.server.security_utils import is_allowed_host_header
    request = json.load(sys.stdin)
    result = {"argv": {}, "host_allowed": {}}
    for argv in request["argv"]:
        key = json.dumps(argv)
        try:
            ctx = cli.make_context("mlflow", list(argv))
            command = cli
            while isinstance(command, click.Group):
                rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
                name, command, rest = command.resolve_command(ctx, rest)
                ctx = command.make_context(name, rest, parent=ctx)
            result["argv"][key] = {"path": ctx.command_path, "params": {k: v for k, v in ctx.params.items()
                                   if isinstance(v, (str, int, bool, type(None)))}}
        except click.exceptions.ClickException as exc:
            result["argv"][key] = {"error": exc.format_message()}
    for allowed, host in request["host_allowed"]:
        result["host_allowed"][host] = is_allowed_host_header(allowed.split(","), host)
    print(json.dumps(result))
    """
)


def run_mlflow_probe(request: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _MLFLOW_PROBE],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"MLflow probe failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
