"""`ecom-ml serve`: serve (or name) a model's champion online, only once it is verified.

Why not ``mlflow models serve -m models:/recommender@champion``: anyone who can write to the MLflow
server can move the ``champion`` alias with one REST call, to a version that failed its gate, and
MLflow would serve whatever the alias names. Publishing refuses such a champion
(``registry.verified_champion``); this command gives online serving the same check, then serves
the *version number* it verified (``models:/<model>/<version>``), not the alias, so a move after
the check cannot change what is served. A server started this way keeps the version it started
with: after a promotion or a rollback, restart it (the alias is deliberately not followed).

* ``ecom-ml serve --model recommender [--host 127.0.0.1] [--port 5001]`` replaces itself with
  ``mlflow models serve -m models:/recommender/<v> --env-manager local`` (the environment's
  ``bin/`` first on ``PATH``: MLflow starts its HTTP server as the command ``uvicorn``; the
  ``ecom_ml`` package importable: the pyfunc model is the project's own code).
* ``ecom-ml serve --model recommender --print-uri`` prints the verified ``models:/recommender/<v>``
  for ``mlflow.pyfunc.load_model`` (``load_model("$(ecom-ml serve --model recommender --print-uri)")``).

An unverified or missing champion is one line (``ecom-ml: error: refusing to serve …``), exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001


def verified_uri(model_name: str) -> str:
    """``models:/<model>/<version>`` of the verified champion; raises ``UnverifiedChampion`` (one line)."""
    from ecom_ml import registry

    return registry.verified_champion(model_name, download=False).model_uri


def serve_argv(model_uri: str, host: str, port: int, workers: int | None = None) -> list[str]:
    """The ``mlflow models serve`` command line for ``model_uri`` in this environment."""
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", host, "--port", str(port)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv


def serve_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``mlflow models serve`` needs here: this interpreter's ``bin/`` first on ``PATH``
    (for ``uvicorn``, also when the venv is not activated), ``ecom_ml`` on ``PYTHONPATH``, and the
    tracking URI without credentials (the registry client moved those to ``MLFLOW_TRACKING_USERNAME``
    / ``MLFLOW_TRACKING_PASSWORD``, which the child inherits)."""
    from ecom_ml import mlflow_server

    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), *filter(None, [env.get("PATH")])])
    package_root = str(Path(__file__).resolve().parents[1])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    env["MLFLOW_TRACKING_URI"] = mlflow_server.split_credentials(mlflow_server.tracking_uri())[0]
    return env


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def _cmd_serve(args: argparse.Namespace) -> int:
    # Reading the gate report would draw MLflow's download progress bars around the one line.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = verified_uri(args.model)  # UnverifiedChampion (an EcomError): one line, exit 2
    if args.print_uri:
        print(uri)
        return 0
    argv = serve_argv(uri, args.host, args.port, args.workers)
    print(f"ecom-ml: serving {args.model} champion {uri} (verified: gate passed, move on record) at "
          f"http://{args.host}:{args.port}/invocations; restart after a promotion or rollback",
          file=sys.stderr, flush=True)
    os.execve(argv[0], argv, serve_env())
    return 0  # pragma: no cover - exec does not return


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve`` on the ``ecom-ml`` parser's subcommands (``cli.build_parser``)."""
    serve = subparsers.add_parser(
        "serve", help="serve a model's verified champion with `mlflow models serve` (or print its URI)",
        description="Resolves the champion alias, refuses it unless its version passed the gate and the "
        "move is in the history, then runs `mlflow models serve -m models:/MODEL/VERSION --env-manager local` "
        "on that version (never on the alias, which anyone with write access to MLflow can move).",
    )
    serve.add_argument("--model", required=True, help="registered model, e.g. recommender")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--workers", type=int, default=None, help="server processes (default: MLflow's)")
    serve.add_argument("--print-uri", action="store_true",
                       help="only print the verified models:/MODEL/VERSION URI (for mlflow.pyfunc.load_model)")
    serve.set_defaults(func=_cmd_serve)
