"""Where things live and how to reach them, from the environment with embedded-setup defaults.

One module answers "which database, which port, which folder" for the CLI, the Makefile (through
``ecom-ml env``), the tests and the DAGs, so the local stack and a production deployment differ only
in environment variables, never in code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ecom_ml.errors import EcomError

#: Databases the embedded server hosts: the shop's OLTP data, Airflow's metadata, MLflow's registry.
ORDERS_DB = "orders"
AIRFLOW_DB = "airflow"
MLFLOW_DB = "mlflow"
LOCAL_DATABASES = (ORDERS_DB, AIRFLOW_DB, MLFLOW_DB)

DEFAULT_PG_PORT = 55432


def _repo_root() -> Path | None:
    """The checkout this package was installed from in editable mode, if any."""
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "dags").is_dir() and (candidate / "include" / "ecom_ml").is_dir():
        return candidate
    return None


class ConfigError(EcomError):
    """A setting a user gave is unusable; the message names the variable and the value."""


def port_from_env(name: str, default: int) -> int:
    """A TCP port from the environment, with a one-line error naming the variable."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not 1 <= value <= 65535:
        raise ConfigError(f"{name}={raw!r} is not a TCP port (1-65535)")
    return value


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one process."""

    home: Path
    repo: Path | None
    pg_host: str
    pg_port: int
    pg_user: str
    orders_db_url_override: str | None

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def lake_root(self) -> str:
        default = (self.repo / "lake") if self.repo else (self.home / "lake")
        return os.environ.get("ECOM_LAKE_ROOT") or default.as_uri()

    def local_url(self, database: str, driver: str = "postgresql") -> str:
        """URL of a database on the embedded server (trust auth on loopback only)."""
        return f"{driver}://{self.pg_user}@{self.pg_host}:{self.pg_port}/{database}"

    @property
    def orders_db_url(self) -> str:
        return self.orders_db_url_override or self.local_url(ORDERS_DB)


def load() -> Settings:
    repo = _repo_root()
    home_env = os.environ.get("ECOM_HOME")
    if home_env:
        home = Path(home_env).expanduser().resolve()
    elif repo is not None:
        home = repo / ".ecom"
    else:
        home = Path.home() / ".ecom"
    return Settings(
        home=home,
        repo=repo,
        pg_host=os.environ.get("ECOM_PG_HOST", "127.0.0.1"),
        pg_port=port_from_env("ECOM_PG_PORT", DEFAULT_PG_PORT),
        pg_user=os.environ.get("ECOM_PG_USER", "postgres"),
        orders_db_url_override=os.environ.get("ECOM_ORDERS_DB_URL") or None,
    )


def airflow_environment(settings: Settings) -> dict[str, str]:
    """Environment that points Airflow at the embedded stack.

    Values already set in the environment win, so a user can aim the same commands at another
    metadata database or executor without editing anything.
    """
    env = {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.local_url(AIRFLOW_DB, "postgresql+psycopg2"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW_CONN_ORDERS_DB": settings.orders_db_url,
        "ECOM_HOME": str(settings.home),
        "ECOM_PG_PORT": str(settings.pg_port),
        "ECOM_LAKE_ROOT": settings.lake_root,
    }
    if settings.repo is not None:
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(settings.repo / "dags")
        env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(settings.repo / "plugins")
    return {key: os.environ.get(key) or value for key, value in env.items()}
