"""include/k8s/helm-values.yaml and include/k8s/README.md's Helm section, checked against the repository.

There is no cluster, no `helm` and no network here, so what `helm upgrade --install` and the first
nightly run would only find out on a cluster is checked statically, each check with a broken copy
beside it to show that it can fail:

* **Secrets.** Every Secret the values file names (``data.metadataSecretName``, ``*SecretName``,
  ``secret[]``, ``extraEnvFrom``) is created by a ``kubectl create secret generic`` command in the
  README, in the release's namespace, with every key the values file (or the chart, for its own
  ``*SecretName`` values) reads from it.
* **Names.** Every ``ECOM_*`` variable set for Airflow is one the package reads (its string literals),
  every ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` names a connection / Variable id the package uses
  (found in its source: ``Connection.get``/``Variable.get`` arguments, ``*conn_id`` arguments and
  fields), and every connection the package uses is provided. The README's example connections are
  parsed by Airflow's own environment-variable backend and have the conn type of the hook that uses them.
* **Training settings.** The ``ECOM_*`` values build a valid ``TrainingConfig`` and a real
  ``KubernetesPodOperator``; its node selector and GPU toleration match the README's node pools, while
  nothing of Airflow's own tolerates the GPU taint or selects the GPU pool. The pod template path is
  where ``docker/airflow.Dockerfile`` copies ``include/``. The in-cluster ``kubernetes_default``
  connection really takes the hook's in-cluster branch.
* **Pins and wiring.** Image tags agree with ``requirements.txt`` and the Dockerfiles, the MLflow
  Deployment's commands parse with MLflow's CLI and accept the Host that ``MLFLOW_TRACKING_URI`` sends,
  the RoleBinding binds the service accounts the values file names, ``config`` options exist in
  Airflow, and the README's ``airflow`` commands parse with Airflow's CLI parser.

The chart's ``values.schema.json`` is not vendored and cannot be fetched here. The key paths used were
checked by hand against apache/airflow ``chart/values.schema.json`` at commit
0ae9ab641ce588b79a883a0b57d06af0b939aeb4 (a chart whose defaults are Airflow 3.2.2, with ``apiServer``,
``workers.celery`` and ``jwtSecretName``); :data:`SCHEMA_CHECKED_KEYS` lists them, and a new key in
the values file fails :func:`test_values_use_only_schema_checked_keys` until it is checked and listed.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import functools
import json
import re
import shlex
import textwrap
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pendulum
import pytest
import yaml
from airflow.sdk import DAG
from cli_probes import run_airflow_probe, run_mlflow_probe

from ecom_ml import alerts, k8s_training
from ecom_ml.k8s_training import TrainingConfig, training_operator

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "include" / "k8s"
VALUES_FILE = K8S / "helm-values.yaml"
README = K8S / "README.md"
PACKAGE = ROOT / "include" / "ecom_ml"
DAGS = ROOT / "dags"
AIRFLOW_DOCKERFILE = ROOT / "docker" / "airflow.Dockerfile"
MLFLOW_DOCKERFILE = ROOT / "docker" / "mlflow.Dockerfile"
CHART = "apache-airflow/airflow"
CHART_REPO = "https://airflow.apache.org"

#: Key paths of the values file, each checked by hand against the chart's values.schema.json (see the
#: module docstring). Paths end where the schema allows free-form content (labels, node selectors,
#: resources, `config` sections, the env/secret lists, the extraEnvFrom string).
SCHEMA_CHECKED_KEYS = {
    "airflowVersion", "defaultAirflowTag", "images.airflow.repository", "images.airflow.tag",
    "images.airflow.pullPolicy", "executor", "redis.enabled", "labels", "nodeSelector",
    "postgresql.enabled", "data.metadataSecretName", "fernetKeySecretName", "apiSecretKeySecretName",
    "jwtSecretName", "createUserJob.enabled", "dags.persistence.enabled", "dags.gitSync.enabled",
    "apiServer.replicas", "workers.celery.replicas", "workers.celery.resources",
    "workers.celery.serviceAccount.name", "triggerer.serviceAccount.name", "allowPodLaunching",
    "config", "env", "secret", "extraEnvFrom",
}
FREE_FORM = {"labels", "nodeSelector", "resources", "config", "env", "secret", "extraEnvFrom"}

#: The chart's own `*SecretName` values and the key each Secret must hold (chart/values.yaml documents
#: them: "must contain a 'fernet-key' key", ...). A `*SecretName` missing here fails the Secrets test.
CHART_SECRET_KEYS = {
    "data.metadataSecretName": "connection",
    "data.resultBackendSecretName": "connection",
    "data.brokerUrlSecretName": "connection",
    "fernetKeySecretName": "fernet-key",
    "apiSecretKeySecretName": "api-secret-key",
    "jwtSecretName": "jwt-secret",
}

#: Environment variables read by the AWS SDK (botocore's default credential chain, used by the s3://
#: lake through Airflow's ObjectStoragePath); not installed here, so named from its documentation.
AWS_SDK_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                     "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE"}


# ==================================================================================================
# Reading the values file and the README
# ==================================================================================================
@functools.cache
def _values() -> dict[str, Any]:
    return yaml.safe_load(VALUES_FILE.read_text(encoding="utf-8"))


def values() -> dict[str, Any]:
    """A private copy, so a test may break it."""
    return copy.deepcopy(_values())


def readme() -> str:
    return README.read_text(encoding="utf-8")


_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def code_blocks(text: str, lang: str) -> list[str]:
    """Bodies of the fenced blocks of one language, dedented (blocks inside list items are indented)."""
    return [textwrap.dedent(m.group("body")) for m in _FENCE.finditer(text) if m.group("lang") == lang]


def shell_commands(text: str) -> list[list[str]]:
    """argv of every command in the text's ```bash blocks: continuations joined, comments dropped."""
    commands = []
    for block in code_blocks(text, "bash"):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def yaml_documents(text: str) -> list[dict[str, Any]]:
    return [doc for block in code_blocks(text, "yaml") for doc in yaml.safe_load_all(block) if doc]


def _option(argv: list[str], *names: str) -> str | None:
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                return argv[i + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
    return None


def kubectl_secrets(commands: list[list[str]]) -> dict[str, dict[str, Any]]:
    """name -> {"namespace", "data"} of every `kubectl create secret generic NAME --from-literal=K=V ...`."""
    found: dict[str, dict[str, Any]] = {}
    for argv in commands:
        if argv[:1] != ["kubectl"] or "generic" not in argv:
            continue
        i = argv.index("generic")
        if argv[i - 2:i] != ["create", "secret"]:
            continue
        data = {}
        for token in argv[i + 2:]:
            if token.startswith("--from-literal="):
                key, _, value = token.removeprefix("--from-literal=").partition("=")
                data[key] = value
            elif token.startswith("--from-file="):
                spec = token.removeprefix("--from-file=")
                key = spec.split("=", 1)[0] if "=" in spec else Path(spec).name
                data[key] = None
        found[argv[i + 1]] = {"namespace": _option(argv, "-n", "--namespace"), "data": data}
    return found


def helm_install(commands: list[list[str]]) -> dict[str, Any]:
    installs = [argv for argv in commands if argv[:3] == ["helm", "upgrade", "--install"]]
    assert len(installs) == 1, "the README should show exactly one `helm upgrade --install`"
    argv = installs[0]
    positional = [t for i, t in enumerate(argv[3:], 3) if not t.startswith("-")
                  and not argv[i - 1] in ("-n", "--namespace", "-f", "--values", "--timeout", "--version")]
    files = [argv[i + 1] for i, t in enumerate(argv) if t in ("-f", "--values")]
    return {"release": positional[0], "chart": positional[1], "namespace": _option(argv, "-n", "--namespace"),
            "values": files}


def env_entries(vals: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in vals.get("env") or []}


def secret_entries(vals: dict[str, Any]) -> list[dict[str, str]]:
    return list(vals.get("secret") or [])


def env_from(vals: dict[str, Any]) -> list[dict[str, Any]]:
    return yaml.safe_load(vals.get("extraEnvFrom") or "[]") or []


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            yield child, key, value
            yield from _walk(value, child)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def key_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if key in FREE_FORM or not isinstance(value, dict):
            paths.add(path)
        else:
            paths |= key_paths(value, path)
    return paths


# ==================================================================================================
# What the code reads
# ==================================================================================================
def _sources(*roots: Path) -> list[Path]:
    return sorted(path for root in roots for path in root.rglob("*.py"))


@functools.cache
def ecom_settings_read_by_code() -> frozenset[str]:
    """Every `ECOM_*` string literal in the package: the environment variables it reads."""
    found = set()
    for path in _sources(PACKAGE):
        found |= set(re.findall(r"""["'](ECOM_[A-Z0-9_]+)["']""", path.read_text(encoding="utf-8")))
    return frozenset(found)


def _module_constants(tree: ast.Module) -> dict[str, str]:
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
    return constants


@functools.cache
def connection_and_variable_ids() -> tuple[frozenset[str], frozenset[str]]:
    """Connection ids and Variable ids the package and the DAGs use, found in their source.

    Connections: the first argument of ``Connection.get``, any ``*conn_id=`` keyword argument, and
    ``*conn_id`` fields with a literal default. Variables: the first argument of ``Variable.get``.
    Names are resolved through module-level string constants (of any module, when unambiguous).
    """
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in _sources(PACKAGE, DAGS)}
    everywhere: dict[str, set[str]] = {}
    for tree in trees.values():
        for name, value in _module_constants(tree).items():
            everywhere.setdefault(name, set()).add(value)
    connections, variables = set(), set()
    for tree in trees.values():
        local = _module_constants(tree)

        def resolve(node: ast.AST) -> str | None:
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return node.value
            if isinstance(node, ast.Name):
                if node.id in local:
                    return local[node.id]
                if len(everywhere.get(node.id, ())) == 1:
                    return next(iter(everywhere[node.id]))
            return None

        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if (isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name)
                        and func.value.id in ("Connection", "Variable") and node.args):
                    value = resolve(node.args[0])
                    if value:
                        (connections if func.value.id == "Connection" else variables).add(value)
                for keyword in node.keywords:
                    if keyword.arg and keyword.arg.endswith("conn_id") and (value := resolve(keyword.value)):
                        connections.add(value)
            elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                  and node.target.id.endswith("conn_id") and node.value is not None):
                if value := resolve(node.value):
                    connections.add(value)
    return frozenset(connections), frozenset(variables)


def env_name_problems(name: str) -> list[str]:
    """Why an environment variable given to Airflow would be read by nobody (empty: it is read)."""
    connections, variables = connection_and_variable_ids()
    if name.startswith("AIRFLOW_CONN_"):
        ids = {conn_id for conn_id in connections if f"AIRFLOW_CONN_{conn_id.upper()}" == name}
        return [] if ids else [f"{name}: no connection id used in the code is {name[13:].lower()!r}"]
    if name.startswith("AIRFLOW_VAR_"):
        var = name[12:].lower()
        # ecom_ml.k8s_training reads every one of its settings in the AIRFLOW_VAR_ form too.
        k8s_settings = set(re.findall(r'"(ECOM_[A-Z0-9_]+)"', Path(k8s_training.__file__).read_text("utf-8")))
        if var in variables or name[12:] in k8s_settings:
            return []
        return [f"{name}: no Variable {var!r} is read by the code"]
    if name.startswith("ECOM_"):
        return [] if name in ecom_settings_read_by_code() else [f"{name}: the package reads no such setting"]
    if name.startswith("MLFLOW_"):
        import mlflow.environment_variables as mlflow_env

        return [] if hasattr(mlflow_env, name) else [f"{name}: not an MLflow environment variable"]
    if name in AWS_SDK_VARIABLES:
        return []
    return [f"{name}: not a variable ecom-ml, Airflow connections/Variables, MLflow or the AWS SDK read"]


# ==================================================================================================
# Checks (each returns its problems; the tests run them on the real files and on broken copies)
# ==================================================================================================
def referenced_secrets(vals: dict[str, Any]) -> tuple[dict[str, set[str]], list[str], list[str]]:
    """(secret name -> keys read, envFrom secret names, problems) of a values document."""
    keys: dict[str, set[str]] = {}
    problems = []
    for path, key, value in _walk(vals):
        if isinstance(key, str) and key.endswith("SecretName") and value:
            if path not in CHART_SECRET_KEYS:
                problems.append(f"{path}: which key the chart reads from this Secret is not known to this test")
                continue
            keys.setdefault(value, set()).add(CHART_SECRET_KEYS[path])
    for item in secret_entries(vals):
        keys.setdefault(item["secretName"], set()).add(item.get("secretKey") or item["envName"])
    from_names = []
    for item in env_from(vals):
        if "secretRef" in item:
            from_names.append(item["secretRef"]["name"])
    return keys, from_names, problems


def secret_problems(vals: dict[str, Any], text: str) -> list[str]:
    commands = shell_commands(text)
    created = kubectl_secrets(commands)
    namespace = helm_install(commands)["namespace"]
    keys, from_names, problems = referenced_secrets(vals)
    for name in [*keys, *from_names]:
        if name not in created:
            problems.append(f"Secret {name} is read by the values file but no README command creates it")
        elif created[name]["namespace"] != namespace:
            problems.append(f"Secret {name} is created in {created[name]['namespace']!r}, "
                            f"the release runs in {namespace!r}")
    for name, needed in keys.items():
        if name in created and (missing := needed - set(created[name]["data"])):
            problems.append(f"Secret {name} is created without the key(s) {sorted(missing)} the values file reads")
    for name in from_names:
        if name in created:
            if not created[name]["data"]:
                problems.append(f"Secret {name} (envFrom) is created without keys")
            for key in created[name]["data"]:
                problems += [f"Secret {name}: {p}" for p in env_name_problems(key)]
    return problems


def environment_names(vals: dict[str, Any], text: str) -> set[str]:
    """Every environment variable the release gives Airflow: env, secret[] and the envFrom Secrets' keys."""
    created = kubectl_secrets(shell_commands(text))
    names = set(env_entries(vals)) | {item["envName"] for item in secret_entries(vals)}
    for name in env_from(vals):
        names |= set(created.get(name.get("secretRef", {}).get("name"), {}).get("data", {}))
    return names


def name_problems(vals: dict[str, Any], text: str) -> list[str]:
    names = environment_names(vals, text)
    problems = [p for name in sorted(names) for p in env_name_problems(name)]
    connections, _ = connection_and_variable_ids()
    for conn_id in sorted(connections):
        if f"AIRFLOW_CONN_{conn_id.upper()}" not in names:
            problems.append(f"connection {conn_id!r} is used by the code but the release does not provide it")
    return problems


def dockerfile_copies(path: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY, flags dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    copies = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens[:1] == ["COPY"]:
            args = [t for t in tokens[1:] if not t.startswith("--")]
            copies.append((args[:-1], args[-1]))
    return copies


def repo_path_in_image(image_path: str, dockerfile: Path = AIRFLOW_DOCKERFILE) -> Path | None:
    """The repository file that the image holds at `image_path`, following the Dockerfile's COPYs."""
    for sources, dest in dockerfile_copies(dockerfile):
        for source in sources:
            if source.endswith("/") and dest.endswith("/") and image_path.startswith(dest):
                return ROOT / source / image_path.removeprefix(dest)
            if not dest.endswith("/") and image_path == dest:
                return ROOT / source
    return None


def pod_template_problems(vals: dict[str, Any]) -> list[str]:
    image_path = env_entries(vals).get("ECOM_K8S_POD_TEMPLATE")
    if not image_path:
        return ["ECOM_K8S_POD_TEMPLATE is not set"]
    problems = []
    airflow_home = vals.get("airflowHome", "/opt/airflow")
    expected = f"{airflow_home}/include/k8s/{k8s_training.TEMPLATE_NAME}"
    if image_path != expected:
        problems.append(f"ECOM_K8S_POD_TEMPLATE={image_path}, the package looks for {expected}")
    source = repo_path_in_image(image_path)
    if source is None:
        problems.append(f"{image_path}: no COPY in {AIRFLOW_DOCKERFILE.name} puts a file there")
    elif not source.is_file():
        problems.append(f"{image_path} comes from {source.relative_to(ROOT)}, which does not exist")
    else:
        relative = source.relative_to(ROOT).as_posix()
        ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
        if any(fnmatch.fnmatch(relative, p) or relative.startswith(p.rstrip("/") + "/") for p in ignored):
            problems.append(f"{relative} is excluded from the build context by .dockerignore")
    return problems


def training_config(vals: dict[str, Any]) -> TrainingConfig:
    """The TrainingConfig the Airflow pods build from the values file (the template read from the repo)."""
    env = env_entries(vals)
    source = repo_path_in_image(env["ECOM_K8S_POD_TEMPLATE"])
    assert source is not None
    env["ECOM_K8S_POD_TEMPLATE"] = str(source)
    return TrainingConfig.from_env_and_variables(env)


def _node_pool_flags(commands: list[list[str]]) -> tuple[set[str], set[str]]:
    """Labels and taints the README gives node pools (`--node-labels=` flags, `kubectl label/taint node`)."""
    labels, taints = set(), set()
    for argv in commands:
        for token in argv:
            if token.startswith("--node-labels="):
                labels |= set(token.split("=", 1)[1].split(","))
            if token.startswith("--node-taints="):
                taints |= set(token.split("=", 1)[1].split(","))
        if argv[:3] == ["kubectl", "label", "node"]:
            labels |= {t for t in argv[4:] if "=" in t}
        if argv[:3] == ["kubectl", "taint", "node"]:
            taints |= {t for t in argv[4:] if "=" in t or ":" in t}
    return labels, taints


def placement_problems(vals: dict[str, Any], text: str) -> list[str]:
    problems = []
    cfg = training_config(vals)
    gpu_selector = dict(cfg.node_selector)
    if gpu_selector != dict(TrainingConfig().node_selector):
        problems.append(f"ECOM_K8S_NODE_SELECTOR gives {gpu_selector}, the package's default is "
                        f"{dict(TrainingConfig().node_selector)}")
    airflow_selector = vals.get("nodeSelector") or {}
    if not airflow_selector:
        problems.append("Airflow's pods have no nodeSelector: they may land on GPU nodes")
    if not set(airflow_selector) & set(gpu_selector):
        problems.append(f"Airflow's nodeSelector {airflow_selector} does not use the pool label of {gpu_selector}")
    for key, value in airflow_selector.items():
        if gpu_selector.get(key) == value:
            problems.append(f"Airflow's nodeSelector {key}={value} is the GPU pool")
    for path, key, value in _walk(vals):
        if key == "tolerations" and any((t or {}).get("key") == "nvidia.com/gpu" for t in value or []):
            problems.append(f"{path}: an Airflow pod tolerates the GPU taint")
        if key == "nodeSelector" and any(gpu_selector.get(k) == v for k, v in (value or {}).items()):
            problems.append(f"{path}: selects the GPU pool")
    labels, taints = _node_pool_flags(shell_commands(text))
    for key, value in [*gpu_selector.items(), *airflow_selector.items()]:
        if f"{key}={value}" not in labels:
            problems.append(f"the README never labels a node pool {key}={value}")
    with DAG("k8s_deploy_check", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")):
        op = training_operator("train", model="recommender", features_uri="s3://lake/f", out_uri="s3://lake/o",
                               config=cfg)
    if op.node_selector != gpu_selector:
        problems.append(f"the training pod selects {op.node_selector}, not {gpu_selector}")
    if cfg.gpus > 0 and not op.tolerations:
        problems.append("the training pod does not tolerate the GPU taint")
    for toleration in op.tolerations or []:
        # A taint is `key[=value]:effect`; Exists tolerates any value, Equal only its own.
        parsed = [(re.split(r"[=:]", t)[0], t.split("=", 1)[1].split(":")[0] if "=" in t else "", t.rsplit(":", 1)[-1])
                  for t in taints]
        matching = [(key, value) for key, value, effect in parsed
                    if key == toleration.key and effect == toleration.effect
                    and (toleration.operator == "Exists" or value == (toleration.value or ""))]
        if not matching:
            problems.append(f"the README taints no node pool {toleration.key}:{toleration.effect}, "
                            "which is what the training pod tolerates")
    return problems


# ==================================================================================================
# Tests: the values file itself
# ==================================================================================================
def test_values_file_is_yaml_of_the_expected_shape():
    vals = values()
    assert isinstance(vals, dict) and vals
    assert vals["executor"] == "CeleryExecutor", "the deployment mirrors docker-compose.yaml's executor"
    assert vals["postgresql"]["enabled"] is False, "the metadata DB is external, not the chart's PostgreSQL"
    assert vals["data"]["metadataSecretName"], "the metadata DB URL comes from a Secret"
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert vals[key], f"{key}: a fixed key from a Secret, not one the chart generates"
    assert not {"fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"} & set(vals), "no secret in the file"
    for item in vals["env"]:
        assert set(item) == {"name", "value"} and all(isinstance(v, str) for v in item.values()), (
            f"the chart's schema wants env items of two strings: {item}"
        )
    names = [item["name"] for item in vals["env"]] + [item["envName"] for item in vals["secret"]]
    assert len(names) == len(set(names)), "a variable is set twice"
    for item in vals["secret"]:
        assert set(item) == {"envName", "secretName", "secretKey"}, item
    assert isinstance(vals["extraEnvFrom"], str), "the chart wants extraEnvFrom as a (templated) string"
    # Secrets taken whole: the alert channels (optional) and the MLflow credentials (required: the
    # README's MLflow runs the basic-auth app).
    required_whole = {"ecom-ml-mlflow-client"}
    for item in env_from(vals):
        assert set(item) == {"secretRef"}, item
        name = item["secretRef"]["name"]
        assert item["secretRef"].get("optional") is (None if name in required_whole else True), (
            f"{item}: only the MLflow credentials are a required Secret taken whole; the others are optional"
        )


def test_values_use_only_schema_checked_keys():
    unchecked = key_paths(values()) - SCHEMA_CHECKED_KEYS
    assert not unchecked, f"check these against the chart's values.schema.json, then list them: {sorted(unchecked)}"
    broken = values()
    broken["workers"]["replica"] = 3
    broken["triggerer"]["serviceAccount"]["nmae"] = "typo"
    assert {"workers.replica", "triggerer.serviceAccount.nmae"} <= key_paths(broken) - SCHEMA_CHECKED_KEYS


def credential_problems(vals: dict[str, Any]) -> list[str]:
    problems = []
    for name, value in env_entries(vals).items():
        if re.search(r"PASSWORD|SECRET_|TOKEN|ACCESS_KEY", name):
            problems.append(f"{name} belongs in a Secret")
        if re.search(r"://[^/\s:@]+:[^/\s@]+@", value):
            problems.append(f"{name}: a URL with a password")
    return problems


def test_values_contain_no_credentials():
    assert credential_problems(values()) == []
    broken = values()
    broken["env"] += [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"},
                      {"name": "ECOM_ORDERS_DB_URL", "value": "postgresql://u:pw@db:5432/orders"}]
    assert len(credential_problems(broken)) == 2


def test_airflow_config_options_exist():
    from airflow.configuration import conf

    described = conf.configuration_description
    for section, options in values()["config"].items():
        for option in options:
            assert option in described.get(section, {}).get("options", {}), f"[{section}] {option} is no Airflow option"


# ==================================================================================================
# Tests: Secrets and names
# ==================================================================================================
def test_every_secret_is_created_in_the_readme_with_its_keys():
    assert secret_problems(values(), readme()) == []


def _drop_literal(text: str, key: str) -> str:
    return re.sub(rf" --from-literal={re.escape(key)}=\S+", "", text, count=1)


@pytest.mark.parametrize(
    "case",
    ["missing secret", "missing key", "chart key", "wrong namespace", "bad envFrom key", "unknown SecretName"],
)
def test_secret_check_reports_breakage(case):
    vals, text = values(), readme()
    if case == "missing secret":
        vals["secret"][0]["secretName"] = "ecom-ml-not-created"
    elif case == "missing key":
        vals["secret"][0]["secretKey"] = "no-such-key"
    elif case == "chart key":
        text = text.replace("--from-literal=jwt-secret=", "--from-literal=jwt=")
    elif case == "wrong namespace":
        text = text.replace("kubectl -n airflow create secret generic ecom-ml-orders-db",
                            "kubectl -n default create secret generic ecom-ml-orders-db")
    elif case == "bad envFrom key":
        text = text.replace("--from-literal=AIRFLOW_CONN_ECOM_SLACK=", "--from-literal=AIRFLOW_CONN_SLACK=")
    elif case == "unknown SecretName":
        vals["redis"]["passwordSecretName"] = "ecom-ml-redis"
    assert text != readme() or vals != values()
    assert secret_problems(vals, text), f"{case} went unnoticed"


def test_connection_and_variable_ids_are_found_in_the_code():
    connections, variables = connection_and_variable_ids()
    assert {alerts.SLACK_CONN, alerts.SMTP_CONN, TrainingConfig.kubernetes_conn_id, "orders_db"} <= connections
    assert {alerts.EMAIL_TO_VARIABLE, "ecom_lake_root"} <= variables


def test_every_variable_given_to_airflow_is_read_and_every_connection_provided():
    assert name_problems(values(), readme()) == []


@pytest.mark.parametrize(
    "name", ["ECOM_TRAINER_IMGE", "AIRFLOW_CONN_ORDERS", "AIRFLOW_VAR_ECOM_LAKE", "MLFLOW_TRACKING_URL", "GPU_POOL"]
)
def test_name_check_reports_unknown_variables(name):
    vals = values()
    vals["env"].append({"name": name, "value": "x"})
    assert any(name in p for p in name_problems(vals, readme()))


def test_name_check_reports_an_unprovided_connection():
    vals = values()
    vals["secret"] = [s for s in vals["secret"] if s["envName"] != "AIRFLOW_CONN_ORDERS_DB"]
    assert any("'orders_db'" in p for p in name_problems(vals, readme()))


def test_lake_root_is_one_object_store_uri():
    env = env_entries(values())
    assert env["ECOM_LAKE_ROOT"] == env["AIRFLOW_VAR_ECOM_LAKE_ROOT"], "the package and the DAG tasks see one lake"
    assert urlsplit(env["ECOM_LAKE_ROOT"]).scheme == "s3", "a cluster's lake is object storage, not a local folder"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= {s["envName"] for s in values()["secret"]}


def test_readme_connections_are_airflow_connections_of_the_right_type(monkeypatch):
    """The README's example values, parsed by Airflow's environment-variable secrets backend."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend
    from sqlalchemy.engine import make_url

    vals, created = values(), kubectl_secrets(shell_commands(readme()))
    environment = dict(env_entries(vals))
    for item in vals["secret"]:
        environment[item["envName"]] = created[item["secretName"]]["data"][item["secretKey"]]
    for item in env_from(vals):
        environment.update(created[item["secretRef"]["name"]]["data"])
    # The hook each connection is used with (ecom_ml.ingest, ecom_ml.alerts, ecom_ml.k8s_training).
    hooks = {"orders_db": PostgresHook, alerts.SLACK_CONN: SlackWebhookHook, alerts.SMTP_CONN: SmtpHook,
             training_config(vals).kubernetes_conn_id: KubernetesHook}
    assert set(hooks) == set(connection_and_variable_ids()[0])
    for conn_id, hook in hooks.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", environment[f"AIRFLOW_CONN_{conn_id.upper()}"])
        connection = EnvironmentVariablesBackend().get_connection(conn_id)
        assert connection is not None and connection.conn_type == hook.conn_type, conn_id
    orders = EnvironmentVariablesBackend().get_connection("orders_db")
    assert orders.host and orders.schema and orders.login
    assert environment["ECOM_ORDERS_DB_URL"].startswith("postgresql://"), "the CLI takes a libpq URL"
    metadata = make_url(created[vals["data"]["metadataSecretName"]]["data"]["connection"])
    assert (metadata.get_backend_name(), metadata.get_driver_name()) == ("postgresql", "psycopg2")


def test_kubernetes_connection_takes_the_in_cluster_branch(monkeypatch):
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.config import ConfigException

    cfg = training_config(values())
    monkeypatch.setenv(f"AIRFLOW_CONN_{cfg.kubernetes_conn_id.upper()}",
                       env_entries(values())[f"AIRFLOW_CONN_{cfg.kubernetes_conn_id.upper()}"])
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    hook = KubernetesHook(conn_id=cfg.kubernetes_conn_id)
    assert hook._get_field("in_cluster") is True
    # Outside a pod the in-cluster loader (and only it) fails this way: the pod's token is what is used.
    with pytest.raises(ConfigException, match="Service host/port is not set"):
        hook.get_conn()


# ==================================================================================================
# Tests: training pods, node pools, images
# ==================================================================================================
def test_training_settings_build_a_valid_config_that_matches_the_readme():
    cfg = training_config(values())
    assert cfg.mode == "kubernetes"
    assert cfg.gpus >= 1
    image = cfg.image
    assert re.fullmatch(r"[^:@\s]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image) and not image.endswith(":latest"), (
        f"pin the trainer image ({image})"
    )
    commands = shell_commands(readme())
    assert ["kubectl", "create", "namespace", cfg.namespace] in commands
    assert ["kubectl", "-n", cfg.namespace, "create", "serviceaccount", cfg.service_account] in commands
    trainer_secret = kubectl_secrets(commands)[cfg.secret_name]
    assert trainer_secret["namespace"] == cfg.namespace and trainer_secret["data"]
    built = {argv[argv.index("-t") + 1] for argv in commands if argv[:2] == ["docker", "build"]}
    pushed = {argv[2] for argv in commands if argv[:2] == ["docker", "push"]}
    assert image in built and image in pushed, "the README builds and pushes the trainer image the values name"


def test_visibility_timeout_outlasts_a_training_run():
    cfg = training_config(values())
    timeout = int(values()["config"]["celery_broker_transport_options"]["visibility_timeout"])
    assert timeout > cfg.execution_timeout.total_seconds() + cfg.startup_timeout_seconds


def test_pod_template_path_is_where_the_image_puts_it():
    assert pod_template_problems(values()) == []
    assert repo_path_in_image(env_entries(values())["ECOM_K8S_POD_TEMPLATE"]) == K8S / k8s_training.TEMPLATE_NAME


@pytest.mark.parametrize("path", ["/opt/airflow/k8s/trainer-pod-template.yaml",
                                  "/opt/airflow/include/k8s/no-such-template.yaml", "/tmp/trainer-pod-template.yaml"])
def test_pod_template_check_reports_wrong_paths(path):
    vals = values()
    for item in vals["env"]:
        if item["name"] == "ECOM_K8S_POD_TEMPLATE":
            item["value"] = path
    assert pod_template_problems(vals)


def test_airflow_stays_off_the_gpu_pool_and_training_goes_on_it():
    assert placement_problems(values(), readme()) == []


@pytest.mark.parametrize("case", ["gpu toleration", "gpu selector", "no selector", "other label", "readme taint"])
def test_placement_check_reports_breakage(case):
    vals, text = values(), readme()
    if case == "gpu toleration":
        vals["workers"]["celery"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    elif case == "gpu selector":
        vals["nodeSelector"] = {"ecom-ml/pool": "gpu"}
    elif case == "no selector":
        del vals["nodeSelector"]
    elif case == "other label":
        for item in vals["env"]:
            if item["name"] == "ECOM_K8S_NODE_SELECTOR":
                item["value"] = "pool=accelerated"
    elif case == "readme taint":
        text = text.replace("nvidia.com/gpu=present:NoSchedule", "nvidia.com/gpu=present:PreferNoSchedule")
    assert placement_problems(vals, text), f"{case} went unnoticed"


def test_image_tags_match_the_airflow_pin():
    vals = values()
    pinned = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if m := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.split("#")[0].strip()):
            pinned[m.group(1).lower()] = m.group(2)
    airflow = pinned["apache-airflow"]
    assert vals["airflowVersion"] == vals["defaultAirflowTag"] == airflow
    assert vals["images"]["airflow"]["tag"].split("-")[0] == airflow, "the image tag starts with its Airflow version"
    base = re.search(r"ARG AIRFLOW_BASE_IMAGE=apache/airflow:([\d.]+)-python", AIRFLOW_DOCKERFILE.read_text())
    assert base and base.group(1) == airflow, "docker/airflow.Dockerfile builds another Airflow"
    commands = shell_commands(readme())
    builds = {argv[argv.index("-f") + 1]: argv[argv.index("-t") + 1] for argv in commands
              if argv[:2] == ["docker", "build"]}
    airflow_image = f"{vals['images']['airflow']['repository']}:{vals['images']['airflow']['tag']}"
    assert builds["docker/airflow.Dockerfile"] == airflow_image
    assert builds["docker/mlflow.Dockerfile"].endswith(f":{pinned['mlflow']}"), "the MLflow tag names its MLflow"
    assert all(["docker", "push", tag] in commands for tag in builds.values())


# ==================================================================================================
# Tests: RBAC, MLflow, the install and smoke-test commands
# ==================================================================================================
def test_rolebinding_binds_the_service_accounts_the_values_name():
    vals, docs = values(), yaml_documents(readme())
    namespace = helm_install(shell_commands(readme()))["namespace"]
    training_namespace = training_config(vals).namespace
    roles = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Role"}
    bindings = [d for d in docs if d.get("kind") == "RoleBinding"]
    assert len(bindings) == 1
    binding = bindings[0]
    assert binding["metadata"]["namespace"] == training_namespace
    role = roles[binding["roleRef"]["name"]]
    assert binding["roleRef"]["kind"] == "Role" and role["metadata"]["namespace"] == training_namespace
    granted = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert {("pods", "create"), ("pods", "watch"), ("pods/log", "get"), ("pods/exec", "create")} <= granted
    subjects = {(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]}
    for component in (vals["workers"]["celery"], vals["triggerer"]):
        assert ("ServiceAccount", component["serviceAccount"]["name"], namespace) in subjects
    assert vals["allowPodLaunching"] is False, "no pod-launching Role in Airflow's own namespace is needed"


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command/args from the container's env."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(a)) for a in args]


def test_mlflow_deployment_serves_the_tracking_uri(tmp_path):
    vals, text = values(), readme()
    docs = yaml_documents(text)
    created = kubectl_secrets(shell_commands(text))
    namespace = helm_install(shell_commands(text))["namespace"]
    tracking = urlsplit(env_entries(vals)["MLFLOW_TRACKING_URI"])
    service = next(d for d in docs if d.get("kind") == "Service" and d["metadata"]["name"] == tracking.hostname)
    deployment = next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "mlflow")
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"] == namespace, (
        "a short host name resolves only in Airflow's own namespace"
    )
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    port = next(p for p in service["spec"]["ports"] if p["port"] == tracking.port)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == vals["nodeSelector"], "MLflow runs on the CPU pool like Airflow"
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    pinned_mlflow = re.search(r"^mlflow==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    argvs = []
    for container in containers:
        assert container["image"].endswith(f":{pinned_mlflow}")
        env = {}
        for item in container.get("env", []):
            if "value" in item:  # a plain setting (the auth config's path)
                env[item["name"]] = item["value"]
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = created[ref["name"]]["data"][ref["key"]]
            assert created[ref["name"]]["namespace"] == namespace
        argvs.append(_expand(container["args"], env))
    assert all(argv[0] == "mlflow" for argv in argvs)
    assert not re.search(r"^ENTRYPOINT", MLFLOW_DOCKERFILE.read_text(), re.M), "args must be the whole command"
    server_container = next(c for c, argv in zip(containers, argvs) if argv[1] == "server")
    server_argv = argvs[containers.index(server_container)]
    allowed = server_argv[server_argv.index("--allowed-hosts") + 1]
    request = {"argv": [argv[1:] for argv in argvs] + [["server", "--no-such-flag"]],
               "host_allowed": [[allowed, tracking.netloc], [allowed, "evil.example.com"]]}
    result = run_mlflow_probe(request, tmp_path)
    outcomes = [result["argv"][json.dumps(argv)] for argv in request["argv"]]
    assert "error" in outcomes[-1], "the probe must reject an unknown flag"
    assert all("error" not in o for o in outcomes[:-1]), outcomes
    parsed = {o["path"]: o["params"] for o in outcomes[:-1]}
    assert set(parsed) == {"mlflow server", "mlflow db upgrade"}
    server = parsed["mlflow server"]
    assert server["backend_store_uri"] == parsed["mlflow db upgrade"]["url"], "migrate the database the server uses"
    assert server["backend_store_uri"].startswith("postgresql+psycopg2://")
    assert server["serve_artifacts"], "clients then need no artifact-store credentials"
    mounts = {m["mountPath"] for m in server_container["volumeMounts"]}
    assert server["artifacts_destination"] in mounts, "artifacts go to the mounted volume"
    container_port = next(p for p in server_container["ports"] if p["name"] == port["targetPort"])
    assert str(server["port"]) == str(container_port["containerPort"])
    assert result["host_allowed"][tracking.netloc] is True, "MLflow must accept the Host the clients send"
    assert result["host_allowed"]["evil.example.com"] is False


def test_mlflow_requires_authentication_with_the_secret_airflow_logs_in_with(tmp_path):
    """Issue 12 point 2: the MLflow Deployment runs MLflow's basic-auth app, creates its admin from
    the Secret that Airflow's extraEnvFrom gives the pipeline (required, not optional), and reads its
    auth config from the repo's file; nothing secret is a literal."""
    vals, text = values(), readme()
    docs = yaml_documents(text)
    deployment = next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["args"][:2] == ["mlflow", "server"])
    request = {"argv": [[a if not a.startswith("$(") else "postgresql+psycopg2://u:p@h/db" for a in server["args"][1:]]],
               "host_allowed": []}
    outcome = run_mlflow_probe(request, tmp_path)["argv"][json.dumps(request["argv"][0])]
    assert "error" not in outcome, outcome
    assert outcome["params"]["app_name"] == "basic-auth"
    env = {item["name"]: item for item in server["env"]}
    client = next(e["secretRef"] for e in env_from(vals) if e.get("secretRef", {}).get("name") == "ecom-ml-mlflow-client")
    assert not client.get("optional"), "Airflow cannot talk to an authenticated MLflow without its credentials"
    for admin, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_TRACKING_USERNAME"),
                       ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD")):
        assert env[admin]["valueFrom"]["secretKeyRef"] == {"name": client["name"], "key": key}
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ecom-ml-mlflow"
    for name, item in env.items():
        if re.search(r"(PASSWORD|SECRET|_KEY)$", name):
            assert "value" not in item, f"{name} must come from a Secret"
    # The config file: a ConfigMap made from docker/mlflow-auth.ini, mounted where the path points.
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mount = next(m for m in server["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = volume["configMap"]["name"]
    assert f"kubectl -n airflow create configmap {configmap} --from-file={path.name}=docker/mlflow-auth.ini" in text
    assert (ROOT / "docker" / "mlflow-auth.ini").is_file()
    store = re.search(r"^database_uri = sqlite:///(\S+)$", (ROOT / "docker" / "mlflow-auth.ini").read_text(), re.M)
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    store_mount = next(p for p in mounts if store.group(1).startswith(p + "/"))
    store_volume = next(v for v in pod["volumes"] if v["name"] == mounts[store_mount])
    assert "persistentVolumeClaim" in store_volume, "the auth users must survive a restart"
    assert store_mount != server["args"][server["args"].index("--artifacts-destination") + 1]


def _dag_params() -> dict[str, set[str]]:
    """dag_id -> param names of the DAGs in dags/, as Airflow loads them (training DAGs come from a
    factory, so their decorators are not in the DAG files)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return {dag_id: set(dag.params.keys()) for dag_id, dag in bag.dags.items()}


def test_install_and_smoke_test_commands(tmp_path):
    commands = shell_commands(readme())
    install = helm_install(commands)
    assert install["chart"] == CHART
    assert ["helm", "repo", "add", CHART.split("/")[0], CHART_REPO] in commands
    assert install["values"] == [VALUES_FILE.relative_to(ROOT).as_posix()]
    assert ["kubectl", "create", "namespace", install["namespace"]] in commands
    execs = [argv for argv in commands if argv[:1] == ["kubectl"] and "exec" in argv]
    for argv in execs:
        target = next(t for t in argv if t.startswith("deploy/"))
        assert target.startswith(f"deploy/{install['release']}-"), f"{target}: not a Deployment of the release"
        assert _option(argv, "-n", "--namespace") == install["namespace"]
    forwards = [argv for argv in commands if "port-forward" in argv]
    assert any(f"svc/{install['release']}-api-server" in argv for argv in forwards)
    airflow_argvs = [argv[argv.index("--") + 2:] for argv in execs if argv[argv.index("--") + 1] == "airflow"]
    dags_argvs = [argv for argv in airflow_argvs if argv[0] == "dags"]
    params = _dag_params()
    triggers = [argv for argv in dags_argvs if argv[1] == "trigger"]
    assert triggers, "the README should show how to trigger a run"
    for argv in dags_argvs:
        if argv[1] in ("trigger", "unpause"):
            assert argv[2] in params, f"{argv[2]} is no DAG in dags/"
    for argv in triggers:
        conf = json.loads(_option(argv, "--conf", "-c"))
        assert set(conf) <= params[argv[2]], f"{argv[2]} has no param(s) {set(conf) - params[argv[2]]}"
        date.fromisoformat(conf["day"])
    unpaused = {argv[2] for argv in dags_argvs if argv[1] == "unpause"}
    assert {"orders_ingest", "train_recommender"} <= unpaused, "DAGs start paused (dags_are_paused_at_creation)"
    request = [*dags_argvs, ["dags", "trigger", "orders_ingest", "--no-such-flag"]]
    result = run_airflow_probe({"argv": request, "modules": [], "connections": {}}, tmp_path, "CeleryExecutor")
    outcome = [result["argv"][json.dumps(argv)] for argv in request]
    assert outcome[-1] is not None, "the parser must reject an unknown flag"
    for argv, error in zip(dags_argvs, outcome):
        assert error is None, f"`airflow {' '.join(argv)}`: {error}"
