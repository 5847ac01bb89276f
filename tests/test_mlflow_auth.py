"""MLflow's own basic-auth app, as the deployable stack runs it (docker-compose.yaml, include/k8s):
``mlflow server --app-name basic-auth`` with the auth config file of docker/ and the admin password
from the environment (``MLFLOW_AUTH_ADMIN_PASSWORD``). A real server on a free port with a
throwaway SQLite store: an unauthenticated REST call is refused with 401, a wrong password too, and
ecom-ml's registry client with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (what the
Airflow services get from the same secret) works.

The basic-auth app needs Flask-WTF (what ``mlflow[auth]`` adds): pinned in requirements.txt, so the
project's environment runs this test, and installed in docker/mlflow.Dockerfile's image.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ecom_ml.localhost import free_port

ROOT = Path(__file__).resolve().parents[1]
AUTH_INI = ROOT / "docker" / "mlflow-auth.ini"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening yet
        return 0


def test_basic_auth_refuses_anonymous_calls_and_the_pipeline_credentials_work(tmp_path, monkeypatch):
    # The compose file's auth config, with the user store moved from the container's volume to tmp.
    ini = AUTH_INI.read_text().replace("sqlite:////mlflow/auth/basic_auth.db", f"sqlite:///{tmp_path}/auth.db")
    assert f"sqlite:///{tmp_path}/auth.db" in ini, "the auth store path in docker/mlflow-auth.ini changed"
    (tmp_path / "auth.ini").write_text(ini)
    password = f"pw-{os.urandom(8).hex()}"
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": "ecom-ml", "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while _status(f"{url}/health") != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                out = server.communicate(timeout=30)[0].decode(errors="replace") if server.poll() is not None else ""
                pytest.fail(f"mlflow server did not come up: {out[-3000:]}")
            time.sleep(0.5)
        search = f"{url}/api/2.0/mlflow/registered-models/search"
        assert _status(search) == 401
        assert _status(search, ("ecom-ml", "wrong")) == 401
        assert _status(search, ("ecom-ml", password)) == 200

        from ecom_ml.registry import Registry

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ecom-ml")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        reg = Registry(url, cache_dir=tmp_path / "cache")
        reg.client.create_registered_model("recommender")
        assert reg.champion_version("recommender") is None
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        output = server.communicate(timeout=30)[0].decode(errors="replace") if server.stdout else ""
    assert password not in output
