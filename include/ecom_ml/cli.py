"""`ecom-ml`: the command line for the local stack and the data tools.

Every failure a user can cause ends in one line, ``ecom-ml: error: <what and where>``, and exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path

from ecom_ml import settings as settings_mod
from ecom_ml.errors import EcomError


def _cmd_db(args: argparse.Namespace) -> int:
    from ecom_ml.db import server

    cfg = settings_mod.load()
    if args.action == "start":
        print(server.start(cfg).describe())
    elif args.action == "stop":
        print(server.stop(cfg).describe())
    elif args.action == "status":
        state = server.status(cfg)
        print(state.describe())
        return 0 if state.running else 3
    elif args.action == "url":
        print(cfg.local_url(args.database) if args.database else cfg.orders_db_url)
    elif args.action == "migrate":
        from ecom_ml.db.migrate import migrate

        applied = migrate(cfg.orders_db_url)
        if applied:
            print("applied: " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
        else:
            print("orders schema is up to date")
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    for key, value in sorted(settings_mod.airflow_environment(settings_mod.load()).items()):
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _airflow_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings_mod.airflow_environment(settings_mod.load()))
    return env


def _airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _cmd_airflow(args: argparse.Namespace) -> int:
    """Run the airflow CLI against the project's stack (its AIRFLOW_HOME, metadata DB and DAGs)."""
    argv = list(args.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    os.execve(_airflow_bin(), [_airflow_bin(), *argv], _airflow_env())
    return 0  # pragma: no cover - exec does not return


def _cmd_ui(args: argparse.Namespace) -> int:
    """The long-running local Airflow (api-server with the UI, scheduler, dag-processor, triggerer)."""
    from ecom_ml import local_airflow

    if args.action == "start":
        print(local_airflow.start_background())
    elif args.action == "stop":
        print(local_airflow.stop_background())
    else:
        running, text = local_airflow.status_background()
        print(text)
        return 0 if running else 3
    return 0


def _cmd_setup(args: argparse.Namespace) -> int:
    """Bring the local stack to a usable state: PostgreSQL up, orders schema and Airflow's DB migrated,
    the MLflow tracking server running."""
    from ecom_ml.db import redact_url, server
    from ecom_ml.db.migrate import migrate

    cfg = settings_mod.load()
    print(f"PostgreSQL: {server.start(cfg).describe()}")
    applied = migrate(cfg.orders_db_url)
    print(f"orders schema: {'applied ' + str(len(applied)) + ' migration(s)' if applied else 'up to date'}")
    cfg.airflow_home.mkdir(parents=True, exist_ok=True)
    # The first `airflow` command writes a fresh AIRFLOW_HOME's airflow.cfg, with generated secrets;
    # two setups at once (two `make demo`s) must not write it side by side.
    from ecom_ml.localhost import file_lock

    with file_lock(cfg.home / "airflow-setup.lock"):
        done = subprocess.run([_airflow_bin(), "db", "migrate"], env=_airflow_env(), capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EcomError(f"`airflow db migrate` failed on {redact_url(cfg.local_url(settings_mod.AIRFLOW_DB))}: "
                        f"{redact_url(last)}")
    print(f"Airflow metadata DB: migrated ({redact_url(cfg.local_url(settings_mod.AIRFLOW_DB))})")
    from ecom_ml import mlflow_server

    print(f"MLflow: {mlflow_server.start(cfg).describe()}")
    print(f"lake: {_setup_lake(cfg)}")
    return 0


def _cmd_lake(args: argparse.Namespace) -> int:
    """Create a lake root on purpose: writes into a root that does not exist are refused."""
    from ecom_ml.lake import Lake

    lake = Lake(args.root or settings_mod.load().lake_root)
    if args.action == "init":
        print(f"lake: {'created a new, empty lake at' if lake.init() else 'already exists:'} {lake.root}")
        return 0
    if lake.exists():
        print(f"lake: {lake.root} exists")
        return 0
    print(f"lake: {lake.root} does not exist (create it with `ecom-ml lake init {lake.root}`)")
    return 3


def _default_lake_root(cfg: settings_mod.Settings) -> str:
    """What ``Settings.lake_root`` gives when ECOM_LAKE_ROOT is unset (``eval "$(ecom-ml env)"`` exports it)."""
    return ((cfg.repo / "lake") if cfg.repo else (cfg.home / "lake")).as_uri()


def _setup_lake(cfg: settings_mod.Settings) -> str:
    """The default local lake is created by setup; a lake the user named is only checked, never created."""
    from ecom_ml.lake import Lake

    lake = Lake(cfg.lake_root)
    if lake.root != Lake(_default_lake_root(cfg)).root:
        if lake.exists():
            return f"{lake.root} (exists)"
        return f"{lake.root} does NOT exist: check ECOM_LAKE_ROOT, or create it with `ecom-ml lake init`"
    return f"{lake.root} ({'created, empty' if lake.init() else 'exists'})"


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _cmd_generate(args: argparse.Namespace) -> int:
    from ecom_ml.generator import GeneratorConfig, generate, parse_injections

    config = GeneratorConfig(
        start=args.start,
        days=args.days,
        orders_per_day=args.orders_per_day,
        seed=args.seed,
        customers=args.customers,
        products=args.products,
        injections=parse_injections(args.inject or ""),
        alongside_imported=args.alongside_imported,
    )
    url = args.db_url or settings_mod.load().orders_db_url
    summary = generate(url, config, progress=not args.quiet)
    print(summary.describe())
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from ecom_ml.importer import import_file

    url = args.db_url or settings_mod.load().orders_db_url
    result = import_file(url, Path(args.source), mapping=Path(args.mapping) if args.mapping else None,
                         rejects=Path(args.rejects) if args.rejects else None, progress=not args.quiet,
                         on_conflict="skip" if args.skip_conflicts else "refuse")
    print(result.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecom-ml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="manage the project-local PostgreSQL server and the orders schema")
    db.add_argument("action", choices=["start", "stop", "status", "url", "migrate"])
    db.add_argument("--database", choices=settings_mod.LOCAL_DATABASES, help="with `url`: which database")
    db.set_defaults(func=_cmd_db)

    env = sub.add_parser("env", help="print shell exports that point Airflow at the local stack")
    env.set_defaults(func=_cmd_env)

    ui = sub.add_parser("ui", help="run the local Airflow (UI, scheduler, dag-processor, triggerer) in the background")
    ui.add_argument("action", choices=["start", "stop", "status"])
    ui.set_defaults(func=_cmd_ui)

    setup = sub.add_parser("setup", help="start the server, migrate the orders and Airflow databases, create the default lake")
    setup.set_defaults(func=_cmd_setup)

    lake = sub.add_parser("lake", help="create (init) or check (status) the Parquet lake root")
    lake.add_argument("action", choices=["init", "status"])
    lake.add_argument("root", nargs="?", default=None, help="lake root URI (default: ECOM_LAKE_ROOT or ./lake)")
    lake.set_defaults(func=_cmd_lake)

    airflow = sub.add_parser("airflow", help="run the airflow CLI against the local stack")
    airflow.add_argument("args", nargs=argparse.REMAINDER)
    airflow.set_defaults(func=_cmd_airflow)

    gen = sub.add_parser("generate", help="generate realistic orders into the orders database")
    gen.add_argument("--start", type=_parse_date, required=True, help="first day, YYYY-MM-DD")
    gen.add_argument("--days", type=int, default=30)
    gen.add_argument("--orders-per-day", type=int, default=2000)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--customers", type=int, default=None, help="initial customers (default: scales with volume)")
    gen.add_argument("--products", type=int, default=None, help="initial products (default: scales with volume)")
    gen.add_argument("--inject", default="", help="faults, e.g. null_customer=0.01,empty_day=2024-01-15")
    gen.add_argument("--db-url", default=None, help="orders database (default: the local server)")
    gen.add_argument("--alongside-imported", action="store_true",
                     help="generate into days that hold orders the generator did not write (they are kept)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_cmd_generate)

    imp = sub.add_parser("import", help="import a shop's order export (default mapping: Online Retail II)")
    imp.add_argument("source", help="CSV file (plain or .gz)")
    imp.add_argument("--mapping", default=None, help="column mapping YAML (default: the Online Retail II one)")
    imp.add_argument("--rejects", default=None, help="where rejected rows go (default: $ECOM_HOME/imports/<name>.rejects.csv)")
    imp.add_argument("--db-url", default=None, help="orders database (default: the local server)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.add_argument("--skip-conflicts", action="store_true",
                     help="import the rest when invoices already present have other lines (default: refuse)")
    imp.set_defaults(func=_cmd_import)

    from ecom_ml import registry

    registry.add_cli(sub)  # mlflow start|stop|status|url, rollback, history
    from ecom_ml import serve_champion

    serve_champion.add_cli(sub)  # serve --model M [--print-uri]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EcomError as exc:
        print(f"ecom-ml: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecom-ml: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
