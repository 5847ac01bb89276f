"""docker-compose.yaml and its images, checked without a Docker engine.

There is no Docker here, so what `docker compose up` would only find out at run time is checked
statically, each check with a broken copy beside it to show that it can fail:

* **Schema.** After Compose-style interpolation (``${VAR:-default}`` and friends), the file validates
  against the official Compose Specification JSON schema (compose-spec/compose-spec,
  ``schema/compose-spec.json``). The schema is not vendored: a pinned npm package that ships it
  verbatim -- dclint 3.1.0, whose ``schemas/compose.schema.json`` is downloaded unchanged from
  compose-spec by its ``update-compose-schema`` script -- is fetched once with ``npm pack`` into
  ``.ecom/cache/compose-schema/`` and checked against the registry's sha512 integrity of the tarball
  and the sha256 of the file. (The PyPI alternative, docker-compose 1.29.2's
  ``compose/config/compose_spec.json``, is a 2021 snapshot that predates keys the Compose CLI accepts
  today.) On a machine without npm or the registry, point ``ECOM_COMPOSE_SCHEMA`` at a copy of
  compose-spec.json.
* **Coherence.** Every service has an image or a build; build contexts and Dockerfiles exist; every
  Dockerfile COPY source exists and is not excluded by .dockerignore; bind-mounted host paths exist
  (or are on a short, justified list of paths the project creates); named volumes are declared and
  used; depends_on targets exist, ``service_healthy`` targets have a healthcheck, one-shot targets do
  not restart, and default services do not wait on profile-only ones.
* **Commands.** Airflow commands parse with Airflow's own CLI parser (``airflow.cli.cli_parser``),
  MLflow commands with MLflow's click CLI, the package's with ``ecom_ml.cli``; the trainer's
  entrypoint is the Dockerfile's and its ``--help`` runs.
* **Wiring.** Connection URLs name services and the credentials those services are started with,
  under the defaults and under overridden variables; secrets have no default; every variable the
  file reads is documented in docker/README-compose.md; image pins agree with constraints.txt.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from cli_probes import clean_env, run_airflow_probe, run_mlflow_probe

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
README_COMPOSE = ROOT / "docker" / "README-compose.md"
AIRFLOW_DOCKERFILE = "docker/airflow.Dockerfile"
MLFLOW_DOCKERFILE = "docker/mlflow.Dockerfile"
TRAINER_DOCKERFILE = "docker/trainer.Dockerfile"

# --- where the Compose Specification schema comes from -------------------------------------------
SCHEMA_NPM_PACKAGE = "dclint@3.1.0"
SCHEMA_TARBALL_INTEGRITY = (
    "sha512-afTGdzRFUXK4yCpIiEW/LOR+9TOMEDhNldDp56VCWzn7JDmD451PcUi640GGlMHgbHKJ10rDBm4PtpcBbjqlXw=="
)
SCHEMA_MEMBER = "package/schemas/compose.schema.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"
SCHEMA_CACHE = ROOT / ".ecom" / "cache" / "compose-schema"

# --- the policy this file encodes -----------------------------------------------------------------
#: Variables the stack cannot start without (``${VAR:?...}``): the secrets, and nothing else.
REQUIRED_SECRETS = {"AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY",
                    "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}
#: The only literal defaults a credential may have: obviously-local values, as in Airflow's file.
LOCAL_CREDENTIAL_DEFAULTS = {"airflow", "mlflow", "orders"}
#: Bind-mount sources that may be missing in a fresh clone, and why that is fine. Docker creates a
#: missing source of a short-syntax bind mount as an empty folder (airflow-init then hands lake/ to
#: AIRFLOW_UID); anything else missing is an error.
MAY_BE_ABSENT = {
    "lake": "pipeline output, gitignored; the package and airflow-init create it",
}
#: A second set of values for every knob, to show the wiring does not rely on the defaults lining up.
OVERRIDES = {
    "AIRFLOW_UID": "1234",
    "AIRFLOW_DB_USER": "meta_user",
    "AIRFLOW_DB_PASSWORD": "meta-pw-1",
    "MLFLOW_DB_USER": "registry_user",
    "MLFLOW_DB_PASSWORD": "registry-pw-2",
    "ORDERS_DB_USER": "shop_reader",
    "ORDERS_DB_PASSWORD": "shop-pw-3",
    "ORDERS_DB_NAME": "shop",
    "ECOM_LAKE_DIR": "./lake",
    "AIRFLOW_PROJ_DIR": ".",
    "MLFLOW_PORT": "15000",
    "AIRFLOW_API_PORT": "18080",
    "ORDERS_DB_HOST_PORT": "15433",
}
SECRET_VALUES = {name: f"test-value-of-{name.lower()}" for name in REQUIRED_SECRETS}
ENVIRONMENTS = {"defaults": dict(SECRET_VALUES), "overridden": {**SECRET_VALUES, **OVERRIDES}}


# ==================================================================================================
# Compose-style interpolation
# ==================================================================================================
_REFERENCE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


class MissingVariable(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def _interpolate_text(text: str, env: dict[str, str], seen: set[str] | None) -> str:
    """One string, as the Compose Specification's interpolation section describes it."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("named"):
            name = match.group("named")
            if seen is not None:
                seen.add(name)
            return env.get(name, "")
        body = match.group("braced")
        parts = _BRACED.fullmatch(body)
        if parts is None:
            raise ValueError(f"invalid interpolation ${{{body}}} in {text!r}")
        name, op, arg = parts.group("name"), parts.group("op"), parts.group("arg") or ""
        if seen is not None:
            seen.add(name)
        value = env.get(name)
        if op is None:
            return value or ""
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if missing else value
        if op.endswith("+"):
            return "" if missing else arg
        if missing:  # "?" / ":?"
            raise MissingVariable(name, arg)
        return value

    return _REFERENCE.sub(replace, text)


def interpolate(node: Any, env: dict[str, str], seen: set[str] | None = None) -> Any:
    """Interpolate every string value (Compose never interpolates keys)."""
    if isinstance(node, str):
        return _interpolate_text(node, env, seen)
    if isinstance(node, dict):
        return {key: interpolate(value, env, seen) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env, seen) for item in node]
    return node


@functools.cache
def _raw_compose() -> dict[str, Any]:
    # safe_load resolves the anchors and `<<` merge keys exactly as Compose's YAML loader does.
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def raw_compose() -> dict[str, Any]:
    return copy.deepcopy(_raw_compose())


def compose(env_name: str = "defaults") -> dict[str, Any]:
    return interpolate(raw_compose(), ENVIRONMENTS[env_name])


def referenced_variables() -> set[str]:
    seen: set[str] = set()
    env = {name: "x" for name in REQUIRED_SECRETS}
    interpolate(raw_compose(), env, seen)
    return seen


# ==================================================================================================
# The schema
# ==================================================================================================
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch_schema_bytes() -> bytes:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "the Compose Specification schema is fetched with npm (`npm pack "
            f"{SCHEMA_NPM_PACKAGE}`), and npm is not on PATH: install it (apt-get install npm) "
            "or set ECOM_COMPOSE_SCHEMA to a copy of compose-spec.json"
        )
    SCHEMA_CACHE.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    with tempfile.TemporaryDirectory(dir=SCHEMA_CACHE) as tmp:
        proc = subprocess.run(
            [npm, "pack", SCHEMA_NPM_PACKAGE, "--pack-destination", tmp, "--ignore-scripts", "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp,
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            pytest.fail(
                f"`npm pack {SCHEMA_NPM_PACKAGE}` failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}"
            )
        data = tarballs[0].read_bytes()
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if integrity != SCHEMA_TARBALL_INTEGRITY:
        pytest.fail(
            f"{SCHEMA_NPM_PACKAGE} tarball integrity {integrity} != pinned {SCHEMA_TARBALL_INTEGRITY}"
        )
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile(SCHEMA_MEMBER)
        if member is None:
            pytest.fail(f"{SCHEMA_NPM_PACKAGE} has no {SCHEMA_MEMBER}")
        schema_bytes = member.read()
    if _sha256(schema_bytes) != SCHEMA_SHA256:
        pytest.fail(f"{SCHEMA_MEMBER} in {SCHEMA_NPM_PACKAGE} is not the pinned schema (sha256 mismatch)")
    return schema_bytes


def load_compose_schema() -> dict[str, Any]:
    override = os.environ.get("ECOM_COMPOSE_SCHEMA")
    if override:
        return json.loads(Path(override).read_text(encoding="utf-8"))
    cached = SCHEMA_CACHE / f"compose-spec-{SCHEMA_SHA256[:16]}.json"
    if cached.is_file() and _sha256(cached.read_bytes()) == SCHEMA_SHA256:
        return json.loads(cached.read_bytes())
    schema_bytes = _fetch_schema_bytes()
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
    partial.write_bytes(schema_bytes)
    os.replace(partial, cached)  # atomic: a concurrent or killed run never sees half a file
    return json.loads(schema_bytes)


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    schema = load_compose_schema()
    declared = str(schema.get("$schema", ""))
    validator_cls = {
        "draft-07": jsonschema.Draft7Validator,
        "2019-09": jsonschema.Draft201909Validator,
        "2020-12": jsonschema.Draft202012Validator,
    }.get(next((key for key in ("draft-07", "2019-09", "2020-12") if key in declared), ""))
    assert validator_cls is not None, f"unexpected $schema {declared!r} in the Compose schema"
    validator_cls.check_schema(schema)
    return validator_cls(schema)


def schema_errors(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> list[str]:
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    )


# ==================================================================================================
# Dockerfiles and .dockerignore
# ==================================================================================================
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, _, default = args.partition("=")
            values[name.strip()] = default.strip().strip('"')
    return values


def _exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over '/'-separated paths (`**` = any number of folders)."""
    pieces = pattern.strip("/").split("/")
    regex = ""
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        if piece == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += re.escape(piece).replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + ("" if last else "/")
    return re.compile(regex + r"\Z")


def dockerignore_patterns(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            patterns.append((negate, _ignore_regex(line[1:] if negate else line)))
    return patterns


def is_dockerignored(relpath: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; a path is out if it or a parent folder is."""
    parts = Path(relpath).parts
    for depth in range(1, len(parts) + 1):
        candidate = "/".join(parts[:depth])
        excluded = False
        for negate, regex in patterns:
            if regex.match(candidate):
                excluded = not negate
        if excluded:
            return True
    return False


def dockerfile_problems(text: str, where: str, context: Path) -> list[str]:
    """COPY/ADD sources that are missing from the build context or excluded by .dockerignore."""
    problems = []
    ignore = dockerignore_patterns(context)
    for keyword, args in dockerfile_instructions(text):
        if keyword not in ("COPY", "ADD"):
            continue
        tokens = _exec_form(args)
        flags = [token for token in tokens if token.startswith("--")]
        if any(flag.startswith("--from") for flag in flags):
            continue  # from another stage or image, not the context
        paths = [token for token in tokens if not token.startswith("--")]
        for source in paths[:-1]:
            if "$" in source or "://" in source:
                problems.append(f"{where}: {keyword} source {source!r} cannot be checked statically")
                continue
            relative = os.path.normpath(source)
            if relative.startswith(".."):
                problems.append(f"{where}: {keyword} source {source!r} is outside the build context")
            elif relative != "." and is_dockerignored(relative, ignore):
                problems.append(f"{where}: {keyword} source {source!r} is excluded by .dockerignore")
            elif not (context / relative).exists():
                problems.append(f"{where}: {keyword} source {source!r} does not exist in {context}")
    return problems


def read_dockerfile(name: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    instructions = dockerfile_instructions((ROOT / name).read_text(encoding="utf-8"))
    return instructions, dockerfile_args(instructions)


def base_image(name: str) -> str:
    instructions, args = read_dockerfile(name)
    reference = next(value for keyword, value in instructions if keyword == "FROM").split()[0]
    return _interpolate_text(reference, args, None)


# ==================================================================================================
# Coherence of the compose model
# ==================================================================================================
def _bind_and_volume_sources(service: dict[str, Any]) -> tuple[list[tuple[str, bool]], list[str]]:
    """(bind sources with 'docker creates it if missing'), named volumes, of one service."""
    binds, named = [], []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source = entry.split(":", 1)[0] if ":" in entry else ""
            if not source:
                continue  # anonymous volume
            if source.startswith((".", "/", "~")):
                binds.append((source, True))
            else:
                named.append(source)
        else:
            kind, source = entry.get("type"), entry.get("source")
            if kind == "bind" and source:
                binds.append((source, bool(entry.get("bind", {}).get("create_host_path", True))))
            elif kind == "volume" and source:
                named.append(source)
    return binds, named


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def _restarts(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) in ("always", "unless-stopped")


def coherence_problems(config: dict[str, Any], root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    services: dict[str, dict[str, Any]] = config.get("services", {})
    declared_volumes = set((config.get("volumes") or {}).keys())
    used_volumes: set[str] = set()
    host_ports: dict[str, str] = {}
    builds_by_image: dict[str, tuple[str, str]] = {}

    for name, service in services.items():
        where = f"services.{name}"
        build = service.get("build")
        if not service.get("image") and not build:
            problems.append(f"{where}: has neither image nor build")
        if build:
            build = {"context": build} if isinstance(build, str) else build
            context = (root / build.get("context", ".")).resolve()
            dockerfile = build.get("dockerfile", "Dockerfile")
            if not context.is_dir():
                problems.append(f"{where}: build context {build.get('context')!r} does not exist")
            elif not (context / dockerfile).is_file():
                problems.append(f"{where}: Dockerfile {dockerfile!r} does not exist in {context}")
            else:
                text = (context / dockerfile).read_text(encoding="utf-8")
                problems.extend(dockerfile_problems(text, f"{where}: {dockerfile}", context))
            if service.get("image"):
                key = (str(context), dockerfile)
                previous = builds_by_image.setdefault(service["image"], key)
                if previous != key:
                    problems.append(
                        f"{where}: image {service['image']!r} is built from two different Dockerfiles"
                    )

        binds, named = _bind_and_volume_sources(service)
        for source, docker_creates in binds:
            path = (root / source).resolve() if not source.startswith("/") else Path(source)
            if path.exists():
                continue
            relative = os.path.relpath(path, root)
            if relative in MAY_BE_ABSENT and docker_creates:
                continue
            problems.append(f"{where}: bind-mount source {source!r} does not exist")
        for volume in named:
            used_volumes.add(volume)
            if volume not in declared_volumes:
                problems.append(f"{where}: named volume {volume!r} is not declared under top-level volumes")

        for dependency, spec in _depends_on(service).items():
            target = services.get(dependency)
            condition = (spec or {}).get("condition", "service_started")
            if target is None:
                problems.append(f"{where}: depends_on {dependency!r}, which is not a service")
                continue
            if condition == "service_healthy" and (
                "healthcheck" not in target or target["healthcheck"].get("disable")
            ):
                problems.append(f"{where}: waits for {dependency!r} to be healthy, but it has no healthcheck")
            if condition == "service_completed_successfully" and _restarts(target):
                problems.append(f"{where}: waits for {dependency!r} to complete, but it restarts forever")
            if not service.get("profiles") and target.get("profiles") and (spec or {}).get("required", True):
                problems.append(
                    f"{where}: a default service depends on {dependency!r}, which is profile-only"
                )

        for port in service.get("ports", []):
            text = str(port if not isinstance(port, dict) else port.get("published", ""))
            parts = text.split(":")
            if len(parts) >= 2:
                published = ":".join(parts[:-1])
                owner = host_ports.setdefault(published, name)
                if owner != name:
                    problems.append(f"{where}: host port {published} is also published by {owner!r}")

    for volume in sorted(declared_volumes - used_volumes):
        problems.append(f"volumes.{volume}: declared but used by no service")
    return problems


def services_built_from(config: dict[str, Any], dockerfile: str) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in config["services"].items()
        if isinstance(service.get("build"), dict) and service["build"].get("dockerfile") == dockerfile
    }


# ==================================================================================================
# Commands the containers run
# ==================================================================================================
_ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "for", "do", "done", "while", "case", "esac"}


def _script_commands(script: str) -> list[list[str]]:
    """Simple commands of a shell script that run a program through the image entrypoint or airflow."""
    commands = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = shlex.split(line, comments=True)
        while tokens and _ENV_ASSIGNMENT.match(tokens[0]):
            tokens = tokens[1:]
        if not tokens or tokens[0] in _SHELL_KEYWORDS or tokens[0] in ("[[", "echo", "set", "mkdir", "chown"):
            continue
        commands.append(tokens)
    return commands


def _through_image_entrypoint(argv: list[str]) -> tuple[str, list[str]]:
    """What the official Airflow image's /entrypoint runs: ('airflow' | 'python' | 'bash', arguments)."""
    if argv and argv[0] == "/entrypoint":
        argv = argv[1:]
    if not argv:
        return "airflow", []
    if argv[0] in ("bash", "python"):
        return argv[0], argv[1:]
    if argv[0] == "airflow":
        return "airflow", argv[1:]
    return "airflow", argv  # anything else is passed to `airflow`


def airflow_image_commands(config: dict[str, Any]) -> dict[str, list[list[str]]]:
    """Argument vectors run in Airflow-image services, by program: airflow, ecom_ml, celery, other."""
    found: dict[str, list[list[str]]] = {"airflow": [], "ecom_ml": [], "celery": [], "other": []}

    def classify(argv: list[str]) -> None:
        program, rest = _through_image_entrypoint(argv)
        if program == "airflow":
            found["airflow"].append(rest)
        elif program == "python" and rest[:2] == ["-m", "ecom_ml.cli"]:
            found["ecom_ml"].append(rest[2:])
        else:
            found["other"].append(argv)

    for service in services_built_from(config, AIRFLOW_DOCKERFILE).values():
        command = service.get("command", [])
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        entrypoint = service.get("entrypoint")
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else entrypoint
        if entrypoint in (["/bin/bash"], ["bash"]) and argv[:1] == ["-c"]:
            for line_argv in _script_commands(argv[1]):
                classify(line_argv)
        elif entrypoint is None:
            classify(argv)
        else:
            found["other"].append([*entrypoint, *argv])
        test = service.get("healthcheck", {}).get("test", [])
        if test[:1] == ["CMD-SHELL"]:
            for alternative in test[1].split("||"):
                tokens = shlex.split(alternative)
                if tokens[:1] == ["airflow"]:
                    found["airflow"].append(tokens[1:])
                elif tokens[:1] == ["celery"]:
                    found["celery"].append(tokens[1:])
    return found


def pins(*files: str) -> dict[str, str]:
    """name -> version of every `name==version` line, names normalised as PEP 503 does."""
    found = {}
    for file in files:
        for line in (ROOT / file).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^]]*\])?==([^\s;]+)", line)
            if match:
                found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


# ==================================================================================================
# Tests: schema
# ==================================================================================================
def test_schema_is_the_compose_specification(compose_validator):
    schema = compose_validator.schema
    assert schema.get("title") == "Compose Specification"
    assert {"services", "volumes", "networks"} <= set(schema["properties"])
    assert "deploy" in schema["definitions"]["service"]["properties"]


@pytest.mark.parametrize("env_name", sorted(ENVIRONMENTS))
def test_compose_file_follows_the_compose_specification(compose_validator, env_name):
    assert schema_errors(compose_validator, compose(env_name)) == []


def test_schema_check_rejects_broken_files(compose_validator):
    """The validation above is not vacuous: small mistakes are caught."""
    misspelt = compose()
    misspelt["services"]["redis"]["helthcheck"] = misspelt["services"]["redis"].pop("healthcheck")
    assert any("helthcheck" in error for error in schema_errors(compose_validator, misspelt))

    bad_gpu = compose()
    del bad_gpu["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    assert any("capabilities" in error for error in schema_errors(compose_validator, bad_gpu))

    bad_condition = compose()
    bad_condition["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert schema_errors(compose_validator, bad_condition)

    unknown_top_level = compose()
    unknown_top_level["service"] = {}
    assert schema_errors(compose_validator, unknown_top_level)


# ==================================================================================================
# Tests: configuration and secrets
# ==================================================================================================
def test_only_the_secrets_are_required():
    """Unset, the secrets stop `docker compose` with a message; everything else has a default."""
    missing: set[str] = set()
    env: dict[str, str] = {}
    while True:
        try:
            interpolate(raw_compose(), env)
            break
        except MissingVariable as exc:
            assert exc.name not in missing
            assert "README-compose" in str(exc), f"{exc.name}'s error message should say where to look"
            missing.add(exc.name)
            env[exc.name] = "x"
    assert missing == REQUIRED_SECRETS


_CREDENTIAL_KEY = re.compile(r"(PASSWORD|SECRET|FERNET|TOKEN|_KEY)$")
_URL_PASSWORD = re.compile(r"://(?:\$\{[^}]*\}|[^:/@\s])*:(?P<password>(?:\$\{[^}]*\}|[^@\s])*)@")
_SINGLE_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _credential_problems(value: str, where: str) -> list[str]:
    match = _SINGLE_REFERENCE.fullmatch(value)
    if match is None:
        return [f"{where}: credential {value!r} is written in the file instead of read from a variable"]
    op, default = match.group("op"), match.group("arg")
    if op in ("-", ":-") and default not in LOCAL_CREDENTIAL_DEFAULTS:
        return [f"{where}: credential default {default!r} is not an obviously-local value"]
    return []


def credential_problems(config: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in config["services"].items():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            where = f"services.{name}.environment.{key}"
            if _CREDENTIAL_KEY.search(key) and key != "AIRFLOW__CORE__AUTH_MANAGER":
                problems += _credential_problems(str(value), where)
        texts = [str(v) for v in environment.values()]
        command = service.get("command", [])
        texts += [command] if isinstance(command, str) else [str(c) for c in command]
        for text in texts:
            for match in _URL_PASSWORD.finditer(text):
                if match.group("password"):  # redis://:@redis has no password to protect
                    problems += _credential_problems(
                        match.group("password"), f"services.{name}: URL in {text!r}"
                    )
    return problems


def test_no_credential_is_written_into_the_file():
    assert credential_problems(raw_compose()) == []
    for secret in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        value = raw_compose()["services"]["airflow-scheduler"]["environment"][secret]
        assert ":?" in value, f"{secret} must be required (no default), got {value!r}"


def test_credential_check_catches_hardcoded_values():
    config = raw_compose()
    config["services"]["orders-db"]["environment"]["POSTGRES_PASSWORD"] = "hunter2"
    config["services"]["mlflow"]["command"][-1] = "postgresql://mlflow:plaintext@postgres/mlflow"
    config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "${AIRFLOW_DB_PASSWORD:-changeme}"
    problems = credential_problems(config)
    assert any("hunter2" in p for p in problems)
    assert any("plaintext" in p for p in problems)
    assert any("changeme" in p for p in problems)


def test_every_variable_is_documented():
    readme = README_COMPOSE.read_text(encoding="utf-8")
    header = COMPOSE_FILE.read_text(encoding="utf-8").split("\n---", 1)[0]
    undocumented = sorted(name for name in referenced_variables() if name not in readme)
    assert undocumented == [], f"variables read by docker-compose.yaml but not in {README_COMPOSE.name}"
    assert sorted(name for name in referenced_variables() if name not in header) == []


# ==================================================================================================
# Tests: coherence of services, paths, volumes, dependencies
# ==================================================================================================
@pytest.mark.parametrize("env_name", sorted(ENVIRONMENTS))
def test_compose_model_is_coherent(env_name):
    assert coherence_problems(compose(env_name)) == []


def _mutations() -> dict[str, tuple[Any, str]]:
    def no_image(c):
        del c["services"]["redis"]["image"]

    def missing_context(c):
        c["services"]["trainer"]["build"]["context"] = "docker/no-such-context"

    def missing_dockerfile(c):
        c["services"]["trainer"]["build"]["dockerfile"] = "docker/no-such.Dockerfile"

    def missing_bind(c):
        c["services"]["redis"]["volumes"] = ["./no-such-folder:/data"]

    def undeclared_volume(c):
        c["services"]["redis"]["volumes"] = ["redis-data:/data"]

    def unused_volume(c):
        c["volumes"]["forgotten"] = None

    def unknown_dependency(c):
        c["services"]["airflow-worker"]["depends_on"]["airflow-webserver"] = {"condition": "service_started"}

    def healthy_without_healthcheck(c):
        c["services"]["mlflow"]["depends_on"]["mlflow-db-migrate"] = {"condition": "service_healthy"}

    def completed_but_restarting(c):
        c["services"]["airflow-init"]["restart"] = "always"

    def default_needs_profile(c):
        c["services"]["airflow-worker"]["depends_on"]["trainer"] = {"condition": "service_started"}

    def duplicate_port(c):
        c["services"]["mlflow"]["ports"] = c["services"]["airflow-apiserver"]["ports"]

    return {
        "no image or build": (no_image, "neither image nor build"),
        "missing build context": (missing_context, "build context 'docker/no-such-context' does not exist"),
        "missing Dockerfile": (missing_dockerfile, "Dockerfile 'docker/no-such.Dockerfile' does not exist"),
        "missing bind source": (missing_bind, "bind-mount source './no-such-folder' does not exist"),
        "undeclared volume": (undeclared_volume, "named volume 'redis-data' is not declared"),
        "unused volume": (unused_volume, "volumes.forgotten: declared but used by no service"),
        "unknown dependency": (unknown_dependency, "depends_on 'airflow-webserver', which is not a service"),
        "healthy without healthcheck": (healthy_without_healthcheck, "has no healthcheck"),
        "completion of a restarting service": (completed_but_restarting, "restarts forever"),
        "default depends on profile": (default_needs_profile, "profile-only"),
        "duplicate host port": (duplicate_port, "is also published by"),
    }


@pytest.mark.parametrize("case", sorted(_mutations()))
def test_coherence_check_reports_breakage(case):
    mutate, expected = _mutations()[case]
    config = compose()
    mutate(config)
    problems = coherence_problems(config)
    assert any(expected in problem for problem in problems), problems


def test_dockerfile_check_reports_missing_and_ignored_sources():
    text = "\n".join(
        [
            "FROM scratch",
            "COPY no-such-file.txt /x",
            "COPY lake/ /lake",
            "COPY --from=build /a /b",
            "COPY include/ /i",
        ]
    )
    problems = dockerfile_problems(text, "test.Dockerfile", ROOT)
    assert any("'no-such-file.txt' does not exist" in p for p in problems), problems
    assert not any("'include/'" in p for p in problems), problems
    # Sources are quoted in the messages; a bare "/a" would also match the checkout's own path.
    assert not any("'/a'" in p for p in problems), problems
    assert any("'lake/' is excluded by .dockerignore" in p for p in problems), problems


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    patterns = dockerignore_patterns(ROOT)
    for path in (
        ".venv/bin/python",
        ".ecom/pgdata/PG_VERSION",
        "lake/raw/orders/dt=2024-01-01/x.parquet",
        "tests/artifacts/report.json",
        ".env",
        "include/ecom_ml/__pycache__/settings.cpython-311.pyc",
        ".git/HEAD",
        "include/ecom_ml.egg-info/PKG-INFO",
    ):
        assert is_dockerignored(path, patterns), path
    for path in (
        "requirements.txt",
        "constraints.txt",
        "include/ecom_ml/settings.py",
        "include/pyproject.toml",
        "dags",
        "docker/postgres-init/10-mlflow.sql",
    ):
        assert not is_dockerignored(path, patterns), path


# ==================================================================================================
# Tests: the commands the containers run
# ==================================================================================================
@pytest.fixture(scope="module")
def airflow_probe(tmp_path_factory):
    config = compose()
    commands = airflow_image_commands(config)
    celery_modules = []
    for argv in commands["celery"]:
        app = argv[argv.index("--app") + 1]
        module, _, attribute = app.rpartition(".")
        celery_modules.append((module, attribute))
    env = config["services"]["airflow-scheduler"]["environment"]
    request = {
        "argv": [*commands["airflow"], ["webserver"], ["celery", "wrker"]],
        "modules": celery_modules,
        "connections": {"orders_db": env["AIRFLOW_CONN_ORDERS_DB"]},
    }
    tmp = tmp_path_factory.mktemp("airflow-probe")
    return commands, run_airflow_probe(request, tmp, env["AIRFLOW__CORE__EXECUTOR"])


def test_airflow_commands_are_airflow_cli_commands(airflow_probe):
    commands, result = airflow_probe
    assert commands["other"] == [], (
        f"commands in Airflow-image services that are not checked: {commands['other']}"
    )
    ran = {tuple(argv) for argv in commands["airflow"]}
    for expected in (
        ("api-server",),
        ("scheduler",),
        ("dag-processor",),
        ("triggerer",),
        ("celery", "worker"),
        ("db", "migrate"),
    ):
        assert expected in ran, f"no service runs `airflow {' '.join(expected)}`"
    errors = {
        argv: error
        for argv, error in result["argv"].items()
        if error and json.loads(argv) in commands["airflow"]
    }
    assert errors == {}, "commands Airflow's CLI parser rejects"
    # ... and the parser does reject what Airflow 3 no longer has:
    assert result["argv"][json.dumps(["webserver"])] is not None
    assert result["argv"][json.dumps(["celery", "wrker"])] is not None


def test_worker_healthcheck_names_an_importable_celery_app(airflow_probe):
    commands, result = airflow_probe
    assert commands["celery"], "the worker's healthcheck should ping its Celery app"
    assert result["modules"] and all(error is None for error in result["modules"].values()), result["modules"]


def test_airflow_init_migrates_and_creates_the_admin_from_variables():
    init = raw_compose()["services"]["airflow-init"]
    script = init["command"][1]
    assert "/entrypoint airflow db migrate" in script
    assert init["user"] == "0:0", "airflow-init chowns the shared folders, so it runs as root"
    environment = init["environment"]
    assert environment["_AIRFLOW_WWW_USER_PASSWORD"].startswith("${_AIRFLOW_WWW_USER_PASSWORD")
    assert "password" not in script.lower(), "the admin password must come only from the environment"


def test_ecom_ml_cli_commands_parse(tmp_path):
    argvs = airflow_image_commands(compose())["ecom_ml"]
    assert argvs, "airflow-init should apply the orders-schema migrations with the package CLI"
    code = (
        "import json, sys\n"
        "from ecom_ml.cli import build_parser\n"
        "for argv in json.load(sys.stdin):\n"
        "    build_parser().parse_args(argv)\n"
    )
    env = clean_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "include"), os.environ.get("PYTHONPATH")]))
    )
    for argv in [*argvs, ["db", "no-such-action"]]:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps([argv]),
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
        )
        if argv[-1] == "no-such-action":
            assert proc.returncode == 2, "the check must be able to fail"
        else:
            assert proc.returncode == 0, f"`ecom-ml {' '.join(argv)}`: {proc.stderr[-1500:]}"


@pytest.fixture(scope="module")
def mlflow_probe(tmp_path_factory):
    config = compose()
    argvs = []
    for service in services_built_from(config, MLFLOW_DOCKERFILE).values():
        command = service["command"]
        argvs.append(shlex.split(command) if isinstance(command, str) else list(command))
    server = next(argv for argv in argvs if argv[1:2] == ["server"])
    allowed = server[server.index("--allowed-hosts") + 1]
    tracking = urlsplit(config["services"]["airflow-worker"]["environment"]["MLFLOW_TRACKING_URI"])
    request = {
        "argv": [argv[1:] for argv in argvs] + [["server", "--no-such-flag"], ["serve"]],
        "host_allowed": [[allowed, tracking.netloc], [allowed, "evil.example.com"]],
    }
    return argvs, tracking, run_mlflow_probe(request, tmp_path_factory.mktemp("mlflow-probe"))


def test_mlflow_commands_are_mlflow_cli_commands(mlflow_probe):
    argvs, _, result = mlflow_probe
    assert all(argv[0] == "mlflow" for argv in argvs)
    paths = {}
    for argv in argvs:
        outcome = result["argv"][json.dumps(argv[1:])]
        assert "error" not in outcome, f"`{' '.join(argv)}`: {outcome.get('error')}"
        paths[outcome["path"]] = outcome["params"]
    assert set(paths) == {"mlflow server", "mlflow db upgrade"}
    server = paths["mlflow server"]
    assert server["backend_store_uri"].startswith("postgresql+psycopg2://")
    assert server["artifacts_destination"] and server["serve_artifacts"]
    assert server["backend_store_uri"] == paths["mlflow db upgrade"]["url"], (
        "migrate the database the server uses"
    )
    assert "error" in result["argv"][json.dumps(["server", "--no-such-flag"])]
    assert "error" in result["argv"][json.dumps(["serve"])]


def test_mlflow_accepts_the_host_name_clients_use(mlflow_probe):
    """MLflow 3 rejects unknown Host headers; in-network clients send `mlflow:5000`."""
    _, tracking, result = mlflow_probe
    assert result["host_allowed"][tracking.netloc] is True
    assert result["host_allowed"]["evil.example.com"] is False


def test_mlflow_requires_authentication_and_the_pipeline_has_its_credentials(mlflow_probe):
    """Issue 12 point 2: MLflow's basic-auth app is on; the admin password and the pipeline's
    MLFLOW_TRACKING_PASSWORD are one required variable, never a literal (tests/test_mlflow_auth.py
    runs the app itself)."""
    argvs, _, result = mlflow_probe
    server_argv = next(argv for argv in argvs if argv[1:2] == ["server"])
    assert result["argv"][json.dumps(server_argv[1:])]["params"]["app_name"] == "basic-auth"
    raw = raw_compose()["services"]
    mlflow_env = raw["mlflow"]["environment"]
    admin_user, admin_password = mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"], mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert _SINGLE_REFERENCE.fullmatch(admin_password).group("op") == ":?", "the admin password has no default"
    assert _SINGLE_REFERENCE.fullmatch(mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]).group("op") == ":?"
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-worker",
                 "airflow-triggerer", "airflow-init"):
        env = raw[name]["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == admin_user, name
        assert env["MLFLOW_TRACKING_PASSWORD"] == admin_password, f"{name} must log in with the same secret"
    assert not any(k.startswith("MLFLOW_TRACKING_") for k in raw["trainer"].get("environment", {})), (
        "the trainer never calls MLflow: no credentials")
    # The auth config the server reads is the repo's file, mounted read-only; it holds no password
    # and keeps its user store on a volume of its own, not under the served artifacts.
    config = compose()["services"]["mlflow"]
    ini_path = config["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    mount = next(v for v in config["volumes"] if v.split(":")[1] == ini_path)
    source, _, mode = mount.split(":")
    assert mode == "ro"
    import configparser

    ini = configparser.ConfigParser()
    assert ini.read(ROOT / source) and set(ini.sections()) == {"mlflow"}
    assert "admin_password" not in ini["mlflow"], "the admin password comes from the environment"
    assert ini["mlflow"]["default_permission"] in ("READ", "NO_PERMISSIONS")
    store = ini["mlflow"]["database_uri"].removeprefix("sqlite:///")
    volumes = {v.split(":")[1]: v.split(":")[0] for v in config["volumes"]}
    assert any(store.startswith(target + "/") and name in raw_compose()["volumes"]
               for target, name in volumes.items()), f"the auth store {store} must be on a named volume"
    assert not store.startswith(config["command"][config["command"].index("--artifacts-destination") + 1])
    healthcheck = " ".join(config["healthcheck"]["test"])
    assert "/health'" in healthcheck, "the healthcheck must use an unprotected route (/health)"


def test_trainer_runs_the_training_module_on_a_gpu():
    config = compose()
    trainer = config["services"]["trainer"]
    assert trainer["profiles"] == ["gpu"], "the trainer must not start with a plain `docker compose up`"
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert trainer["build"]["dockerfile"] == TRAINER_DOCKERFILE
    instructions, _ = read_dockerfile(TRAINER_DOCKERFILE)
    entrypoint = [_exec_form(args) for keyword, args in instructions if keyword == "ENTRYPOINT"][-1]
    assert entrypoint == ["python", "-m", "ecom_ml.train"]
    assert trainer["entrypoint"] == entrypoint, "compose and the image must run the same entrypoint"
    assert [*trainer["entrypoint"], *trainer["command"]] == ["python", "-m", "ecom_ml.train", "--help"]
    user = [args for keyword, args in instructions if keyword == "USER"][-1]
    assert user.split(":")[0] == "50000", "the trainer image runs as uid 50000"
    assert not trainer["user"].startswith("0"), "the trainer service must not run as root"


# ==================================================================================================
# Tests: wiring between services
# ==================================================================================================
def _service_env(config: dict[str, Any], name: str) -> dict[str, str]:
    return config["services"][name].get("environment", {})


@pytest.mark.parametrize("env_name", sorted(ENVIRONMENTS))
def test_database_urls_match_the_databases(env_name):
    config = compose(env_name)
    airflow_env = _service_env(config, "airflow-scheduler")
    postgres_env = _service_env(config, "postgres")
    orders_env = _service_env(config, "orders-db")

    meta = urlsplit(airflow_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (meta.hostname, meta.username, meta.password, meta.path) == (
        "postgres",
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_PASSWORD"],
        "/" + postgres_env["POSTGRES_DB"],
    )
    backend = urlsplit(airflow_env["AIRFLOW__CELERY__RESULT_BACKEND"])
    assert (backend.hostname, backend.username, backend.password) == (
        meta.hostname,
        meta.username,
        meta.password,
    )

    orders = urlsplit(airflow_env["AIRFLOW_CONN_ORDERS_DB"])
    assert (orders.hostname, orders.username, orders.password, orders.path) == (
        "orders-db",
        orders_env["POSTGRES_USER"],
        orders_env["POSTGRES_PASSWORD"],
        "/" + orders_env["POSTGRES_DB"],
    )
    assert airflow_env["ECOM_ORDERS_DB_URL"] == airflow_env["AIRFLOW_CONN_ORDERS_DB"]

    mlflow_command = config["services"]["mlflow"]["command"]
    registry = urlsplit(mlflow_command[mlflow_command.index("--backend-store-uri") + 1])
    assert (registry.hostname, registry.username, registry.password) == (
        "postgres",
        postgres_env["MLFLOW_DB_USER"],
        postgres_env["MLFLOW_DB_PASSWORD"],
    )
    init_sql = (ROOT / "docker" / "postgres-init" / "10-mlflow.sql").read_text(encoding="utf-8")
    assert f"CREATE DATABASE {registry.path.lstrip('/')} " in init_sql
    for variable in ("MLFLOW_DB_USER", "MLFLOW_DB_PASSWORD"):
        assert re.search(rf"\\getenv \w+ {variable}\b", init_sql), f"the init SQL should read {variable}"
    mounts = config["services"]["postgres"]["volumes"]
    assert "./docker/postgres-init:/docker-entrypoint-initdb.d:ro" in mounts


def test_orders_connection_is_an_airflow_postgres_connection(airflow_probe):
    _, result = airflow_probe
    orders_env = _service_env(compose(), "orders-db")
    connection = result["connections"]["orders_db"]
    assert connection["conn_type"] == "postgres"
    assert (connection["host"], connection["login"], connection["password"], connection["schema"]) == (
        "orders-db",
        orders_env["POSTGRES_USER"],
        orders_env["POSTGRES_PASSWORD"],
        orders_env["POSTGRES_DB"],
    )


@pytest.mark.parametrize("env_name", sorted(ENVIRONMENTS))
def test_service_urls_and_lake_point_at_what_exists(env_name):
    config = compose(env_name)
    services = config["services"]
    for name, service in services.items():
        env = service.get("environment", {})
        if "MLFLOW_TRACKING_URI" in env:
            url = urlsplit(env["MLFLOW_TRACKING_URI"])
            command = services[url.hostname]["command"]
            assert command[command.index("--port") + 1] == str(url.port), name
        if "AIRFLOW__CORE__EXECUTION_API_SERVER_URL" in env:
            url = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
            assert (
                services[url.hostname]["command"] == "api-server"
                and url.port == 8080
                and url.path == "/execution/"
            )
        if "ECOM_LAKE_ROOT" in env and env["ECOM_LAKE_ROOT"].startswith("file://"):
            lake = urlsplit(env["ECOM_LAKE_ROOT"]).path
            targets = [v.split(":")[1] for v in service.get("volumes", []) if isinstance(v, str) and ":" in v]
            assert lake in targets, f"{name}: ECOM_LAKE_ROOT {lake} is not a mounted folder"
    apiserver = services["airflow-apiserver"]
    assert apiserver["healthcheck"]["test"][-1] == "http://localhost:8080/api/v2/version"
    for name in ("postgres", "orders-db"):
        assert "pg_isready" in " ".join(services[name]["healthcheck"]["test"])


# ==================================================================================================
# Tests: images agree with the project's pins
# ==================================================================================================
def test_image_versions_match_the_pins():
    pinned = pins("requirements.txt", "constraints.txt")
    airflow_base = base_image(AIRFLOW_DOCKERFILE)
    match = re.fullmatch(r"apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>\d+\.\d+)", airflow_base)
    assert match, f"unexpected Airflow base image {airflow_base!r}"
    assert match.group("airflow") == pinned["apache-airflow"], (
        "base image and requirements.txt pin different Airflows"
    )
    for dockerfile in (TRAINER_DOCKERFILE, MLFLOW_DOCKERFILE):
        python = re.fullmatch(r"python:(?P<python>\d+\.\d+)-slim-\w+", base_image(dockerfile))
        assert python and python.group("python") == match.group("python"), f"{dockerfile} runs another Python"
    _, trainer_args = read_dockerfile(TRAINER_DOCKERFILE)
    cpu_pin = pinned.get("tensorflow-cpu") or pinned.get("tensorflow")
    assert trainer_args["TENSORFLOW_VERSION"] == cpu_pin, (
        "the GPU trainer must build against the pinned TensorFlow"
    )
    image_tag = raw_compose()["services"]["mlflow"]["image"]
    assert image_tag.endswith(f":{pinned['mlflow']}}}"), "the MLflow image tag should name the MLflow it runs"
    for dockerfile in (AIRFLOW_DOCKERFILE, TRAINER_DOCKERFILE, MLFLOW_DOCKERFILE):
        instructions, _ = read_dockerfile(dockerfile)
        installs = " ".join(
            args for keyword, args in instructions if keyword == "RUN" and "pip install" in args
        )
        assert "-c /opt/ecom/constraints.txt" in installs, f"{dockerfile} must install under constraints.txt"
