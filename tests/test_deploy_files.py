"""docker/: the compose file and the worker image, checked without a container engine.

There is none on the development machines or in CI, so nothing here starts a container. What is
checked is what a user would trip over first:

- docker/compose.yaml is valid against the Compose specification's JSON schema. The schema is
  the one the ``docker-compose==1.29.2`` wheel ships (``compose/config/compose_spec.json``),
  downloaded once from PyPI into ``.cache/`` with ``pip download --no-deps``; it predates a few
  newer fields (top-level ``name``, ``depends_on.*.restart``, ``healthcheck.start_interval``),
  which the file does not use.
- its cross-references: every ``depends_on`` names a service, every named volume is declared and
  every bind-mounted file exists; the workers get every setting they need (and no SLUICE_*
  name a worker does not read); the Temporal UI and the codec server agree on the port and the
  origin; the search attributes registered are the ones runs set; the roles and databases the
  workers' URLs name are the ones PostgreSQL's init script creates; example.env names every
  variable the file requires.
- docker/Dockerfile: known instructions only, everything COPY needs exists, every package
  pyproject.toml installs is copied, a non-root user, the state and connectors dirs as volumes,
  and an entrypoint that runs ``sluice worker`` (a console script of pyproject.toml).
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.support.processes import free_port
from tests.support.session import REPO
from workers.cli import main as sluice_main
from workers.connections import Connection, ConnectionsFile
from workers.settings import Settings
from workflows import search_attributes

DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
SCHEMA_WHEEL = "docker-compose==1.29.2"
SCHEMA_IN_WHEEL = "compose/config/compose_spec.json"
SCHEMA_CACHE = REPO / ".cache" / "compose-spec"


# Every instruction a Dockerfile may hold (Dockerfile reference).
DOCKERFILE_INSTRUCTIONS = {
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
}


# -- the Compose specification's schema --------------------------------------------------------


@pytest.fixture(scope="session")
def compose_schema() -> dict[str, Any]:
    """compose_spec.json from the docker-compose 1.29.2 wheel (downloaded once into .cache/)."""
    SCHEMA_CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(SCHEMA_CACHE.glob("docker_compose-1.29.2-*.whl"))
    if not wheels:
        download = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"),
                *("--disable-pip-version-check", "--dest", str(SCHEMA_CACHE), SCHEMA_WHEEL),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert download.returncode == 0, f"pip download {SCHEMA_WHEEL} failed: {download.stderr}"
        wheels = sorted(SCHEMA_CACHE.glob("docker_compose-1.29.2-*.whl"))
    assert wheels, f"pip download left no docker_compose wheel in {SCHEMA_CACHE}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        schema: dict[str, Any] = json.loads(wheel.read(SCHEMA_IN_WHEEL))
    return schema


def schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


# -- the compose file and Compose's variable interpolation ---------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}. A required variable that is missing raises KeyError."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        present = environ.get(name)
        if op in (":-", ":?"):
            present = present or None
        if present is not None:
            return present
        if op in (":?", "?"):
            raise KeyError(f"{name}: {arg}")
        return arg if op in (":-", "-") else ""

    return _VARIABLE.sub(replace, value)


def required_variables(text: str) -> set[str]:
    return {
        m.group("braced") for m in _VARIABLE.finditer(text) if (m.group("op") or "").endswith("?")
    }


def environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    """A service's environment as written (None: passed through from the host when set)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (entry.partition("=") for entry in raw)
        return {name: (value if sep else None) for name, sep, value in pairs}
    return {name: None if value is None else str(value) for name, value in raw.items()}


def resolved_environment(service: Mapping[str, Any], host: Mapping[str, str]) -> dict[str, str]:
    """What the container would see, given the host's (or .env's) variables."""
    resolved = {}
    for name, value in environment(service).items():
        if value is None:
            if name in host:
                resolved[name] = host[name]
        else:
            resolved[name] = interpolate(value, host)
    return resolved


def example_env() -> dict[str, str]:
    """docker/example.env's variables, the commented-out ones included."""
    found = {}
    for line in (DOCKER / "example.env").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2).split("#", 1)[0].strip()
    return found


def filled_in_host() -> dict[str, str]:
    """A host where the operator filled in docker/example.env."""
    host = {name: value or f"value-of-{name.lower()}" for name, value in example_env().items()}
    host["SLUICE_PAYLOAD_KEYS"] = "k1:" + "A" * 43 + "="
    host["AWS_ENDPOINT_URL"] = "http://minio.internal:9000"
    return host


def published(service: Mapping[str, Any]) -> dict[int, int]:
    """host port -> container port, from `ports` entries like "8080:8080"."""
    ports = {}
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        ports[int(parts[-2])] = int(parts[-1])
    return ports


def command_of(service: Mapping[str, Any], key: str) -> list[str]:
    value = service.get(key) or []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def settings_env_names() -> set[str]:
    """Every environment variable a worker's Settings reads."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        choices = getattr(field.validation_alias, "choices", None)
        if choices:
            names.update(str(choice).upper() for choice in choices)
        elif field.alias:
            names.add(field.alias.upper())
        else:
            names.add(f"{prefix}{name}".upper())
    return names


# -- the compose file against the specification ---------------------------------------------------


def test_the_compose_file_is_valid_against_the_compose_specification(
    compose_schema: dict[str, Any], compose: dict[str, Any]
) -> None:
    assert compose_schema.get("title") == "Compose Specification"
    assert schema_errors(compose_schema, compose) == []


def test_the_schema_check_finds_what_docker_compose_would_refuse(
    compose_schema: dict[str, Any], compose: dict[str, Any]
) -> None:
    """The check above can fail: the mistakes a hand edit makes are reported, each at its place."""
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["deploy"]["replicas"] = "three"
    broken["services"]["worker"]["enviroment"] = {"SLUICE_TASK_QUEUE": "sluice"}
    broken["services"]["temporal"]["depends_on"]["postgres"]["condition"] = "service_ready"
    errors = schema_errors(compose_schema, broken)
    assert any(e.startswith("services/worker/deploy/replicas:") for e in errors), errors
    assert any("enviroment" in e for e in errors), errors
    assert any(e.startswith("services/temporal/depends_on") for e in errors), errors


# -- the compose file's cross-references --------------------------------------------------------


def test_every_depends_on_names_a_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", [])
        for needed in depends if isinstance(depends, list) else depends.keys():
            assert needed in services, f"{name} depends on {needed!r}, which is not a service"
            assert needed != name


def test_workers_start_after_temporal_postgres_and_the_search_attributes(
    compose: dict[str, Any],
) -> None:
    depends = compose["services"]["worker"]["depends_on"]
    assert depends["temporal"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["search-attributes"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in compose["services"]["temporal"]
    assert "healthcheck" in compose["services"]["postgres"]


def test_named_volumes_are_declared_and_bind_mounted_files_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    host = filled_in_host()
    host.pop("SLUICE_CONNECTIONS_FILE", None)  # the default: docker/connections.toml
    for name, service in compose["services"].items():
        for entry in service.get("volumes", []):
            source = interpolate(str(entry), host).split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).resolve().exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source!r} is not declared"


def test_workers_get_every_setting_they_need(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    env = resolved_environment(worker, filled_in_host())

    # Nothing a worker does not read: a misspelt SLUICE_* variable would be ignored silently.
    unknown = {n for n in env if n.startswith("SLUICE_")} - settings_env_names()
    assert unknown == set()

    address = urlsplit(f"//{env['SLUICE_TEMPORAL_ADDRESS']}")
    assert address.hostname in services and address.port == 7233
    metadata = urlsplit(env["SLUICE_METADATA_URL"])
    assert metadata.scheme == "postgresql+psycopg" and metadata.hostname in services
    for setting in ("SLUICE_STAGING_URI", "SLUICE_LOG_STORE"):
        assert env[setting].startswith("s3://"), f"{setting} must be on S3 for a fleet"
    for required in ("SLUICE_PAYLOAD_KEYS", "SLUICE_STAGING_URI", "SLUICE_LOG_STORE"):
        assert required in required_variables(str(environment(worker)[required]))
    assert "AWS_ENDPOINT_URL" in env  # any S3 endpoint, from the host's environment
    assert worker["deploy"]["replicas"] >= 2

    # What a worker reads from them, as a worker would read them.
    settings = Settings.model_validate(
        {
            name.removeprefix("SLUICE_").lower(): value
            for name, value in env.items()
            if name.startswith("SLUICE_")
        }
    )
    assert settings.temporal_address == "temporal:7233"
    assert settings.task_queue == "sluice"
    assert len(settings.payload_key_list()) == 1
    assert settings.resolved_staging_uri.startswith("s3://")


def test_the_mounted_connections_load_into_postgres_with_their_dsn_set(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    image_env = dockerfile_env()
    mounts = [interpolate(str(entry), {}) for entry in worker["volumes"]]
    target = image_env["SLUICE_CONNECTIONS_FILE"]
    (source,) = [entry.split(":")[0] for entry in mounts if entry.split(":")[1] == target]
    connections = ConnectionsFile.load(DOCKER / source)
    env = resolved_environment(worker, filled_in_host())
    for connection in connections.connections.values():
        assert isinstance(connection, Connection)
        # A fleet: a DuckDB file would tie the connection's syncs to one host.
        assert connection.destination.type == "postgres", connection.id
        assert connection.destination.dsn_env in env, connection.id
        dsn = urlsplit(env[connection.destination.dsn_env])
        assert dsn.hostname in compose["services"]


def test_the_roles_and_databases_the_urls_name_are_created(compose: dict[str, Any]) -> None:
    init = (DOCKER / "postgres-init.sh").read_text(encoding="utf-8")
    roles = set(re.findall(r"CREATE ROLE (\w+)", init))
    databases = set(re.findall(r"CREATE DATABASE (\w+)", init))
    postgres_env = environment(compose["services"]["postgres"])
    for variable in re.findall(r'"\$([A-Z_]+)"', init):
        assert variable in postgres_env, f"postgres-init.sh reads ${variable}, which is not set"
    worker_env = resolved_environment(compose["services"]["worker"], filled_in_host())
    for url in (worker_env["SLUICE_METADATA_URL"], worker_env["WAREHOUSE_DSN"]):
        parts = urlsplit(url)
        assert parts.username in roles and parts.path.lstrip("/") in databases, url
    temporal = environment(compose["services"]["temporal"])
    # auto-setup creates Temporal's own databases: its role needs CREATEDB.
    assert re.search(rf"CREATE ROLE {temporal['POSTGRES_USER']} LOGIN CREATEDB", init)


def test_the_ui_and_the_codec_server_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ui, codec, worker = services["temporal-ui"], services["codec-server"], services["worker"]
    host = filled_in_host()
    ui_env = resolved_environment(ui, host)
    codec_env = resolved_environment(codec, host)

    endpoint = urlsplit(ui_env["TEMPORAL_CODEC_ENDPOINT"])
    codec_ports = published(codec)
    assert endpoint.port in codec_ports, "the UI calls a port the codec server does not publish"
    listens = command_of(codec, "command")
    assert listens[listens.index("--port") + 1] == str(codec_ports[endpoint.port])
    # In a container, the default 127.0.0.1 would be unreachable through the published port.
    assert listens[listens.index("--host") + 1] == "0.0.0.0"
    # The operator's session cookie (signed in at the codec server with the token) goes along.
    assert ui_env["TEMPORAL_CODEC_INCLUDE_CREDENTIALS"] == "true"
    assert ui_env["TEMPORAL_CODEC_PASS_ACCESS_TOKEN"] in ("true", "false")
    # The cookie is SameSite=Strict: the UI and the codec server must be on one site.
    assert endpoint.hostname == "localhost"

    # The browser's origin is the UI's published port; the codec server must allow it.
    (ui_port,) = published(ui)
    origins = codec_env["SLUICE_CODEC_ALLOWED_ORIGINS"].split(",")
    assert f"http://localhost:{ui_port}" in origins
    assert published(ui)[ui_port] == 8080  # the port temporalio/ui listens on
    for env in (codec_env, resolved_environment(worker, host)):
        assert env["SLUICE_TEMPORAL_UI_URL"] == f"http://localhost:{ui_port}"

    # Operators must present a token: the file refuses to start without one.
    assert "SLUICE_CODEC_TOKEN" in required_variables(str(environment(codec)["SLUICE_CODEC_TOKEN"]))
    # The same keys decrypt what the workers encrypt.
    assert environment(codec)["SLUICE_PAYLOAD_KEYS"] == environment(worker)["SLUICE_PAYLOAD_KEYS"]
    unknown = {n for n in codec_env if n.startswith("SLUICE_")} - settings_env_names()
    assert unknown == set()
    assert command_of(codec, "entrypoint")[-2:] == ["sluice", "codec-server"]


def test_the_codec_server_as_configured_grants_the_ui_and_refuses_without_a_credential(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """`sluice codec-server` with the compose file's command and environment (on loopback and
    a free port instead of 0.0.0.0:8081): the UI's origin gets CORS with credentials, and a
    decode without the operator's credential is refused."""
    codec = compose["services"]["codec-server"]
    env = resolved_environment(codec, filled_in_host())
    (ui_port,) = published(compose["services"]["temporal-ui"])
    argv = command_of(codec, "command")
    port = free_port()
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    sluice = command_of(codec, "entrypoint")[-2:]
    assert sluice == ["sluice", "codec-server"]
    log = tmp_path / "codec.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "sluice"), *sluice[1:], *argv],
            env={**os.environ, **env, "SLUICE_STATE_DIR": str(tmp_path)},
            stdout=output,
            stderr=output,
            cwd=tmp_path,  # no .env of the repository
        )
    try:
        origin = f"http://localhost:{ui_port}"
        preflight = _request(port, "OPTIONS", "/decode", origin, server, log)
        assert preflight.status in (200, 204)
        assert preflight.getheader("Access-Control-Allow-Origin") == origin
        assert preflight.getheader("Access-Control-Allow-Credentials") == "true"
        refused = _request(port, "POST", "/decode", origin, server, log, b'{"payloads": []}')
        assert refused.status == 401
    finally:
        server.terminate()
        server.wait(timeout=30)


def _request(
    port: int,
    method: str,
    path: str,
    origin: str,
    server: subprocess.Popen[bytes],
    log: Path,
    body: bytes | None = None,
) -> http.client.HTTPResponse:
    deadline = time.monotonic() + 30
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            return answer
        except ConnectionRefusedError:
            assert server.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the codec server did not listen in 30 s"
            time.sleep(0.1)
        finally:
            connection.close()


def test_the_search_attributes_runs_set_are_registered(compose: dict[str, Any]) -> None:
    service = compose["services"]["search-attributes"]
    (mount,) = service["volumes"]
    source, target = mount.split(":")[:2]
    assert command_of(service, "entrypoint")[-1] == target
    script = (DOCKER / source).read_text(encoding="utf-8")
    loop = re.search(r"for name in ([^;]+);", script)
    assert loop is not None
    assert loop.group(1).split() == [key.name for key in search_attributes.ALL]
    assert 'search-attribute create --name "$name" --type Keyword' in script
    assert environment(service)["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_example_env_names_every_variable_the_compose_file_requires() -> None:
    required = required_variables(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert required >= {"SLUICE_PAYLOAD_KEYS", "SLUICE_CODEC_TOKEN", "POSTGRES_PASSWORD"}
    assert required - set(example_env()) == set()


# -- the worker image -----------------------------------------------------------------------


def dockerfile_instructions() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/Dockerfile: comments dropped, continuations joined."""
    logical = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        keyword, _, arguments = logical.strip().partition(" ")
        yield keyword, arguments.strip()
        logical = ""
    assert not logical, "docker/Dockerfile ends in a line continuation"


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def test_the_dockerfile_has_only_known_instructions_and_starts_from_an_image() -> None:
    instructions = list(dockerfile_instructions())
    unknown = {keyword for keyword, _ in instructions} - DOCKERFILE_INSTRUCTIONS
    assert unknown == set()
    assert instructions[0][0] == "FROM"


def test_the_worker_image_runs_sluice_worker(compose: dict[str, Any]) -> None:
    instructions = dict(dockerfile_instructions())  # the last of each, as Docker takes it
    entrypoint = json.loads(instructions["ENTRYPOINT"])  # exec form: signals reach the worker
    assert "CMD" not in instructions
    command = entrypoint[entrypoint.index("--") + 1 :] if "--" in entrypoint else entrypoint
    assert command == ["sluice", "worker"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["sluice"] == "workers.cli:main"
    # ... and `worker` is a command of it.
    with pytest.raises(SystemExit) as exited:
        sluice_main(["worker", "--help"])
    assert exited.value.code == 0

    # The compose file's workers run the image as it is.
    worker = compose["services"]["worker"]
    assert "entrypoint" not in worker and "command" not in worker
    build = worker["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_the_image_copies_what_pip_install_needs() -> None:
    context = REPO  # compose.yaml builds with context `..`
    copied = set()
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY":
            *sources, _destination = shlex.split(arguments)
            for source in sources:
                assert (context / source).exists(), f"COPY {source}: not in the build context"
                copied.add(source)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:
        assert package.rstrip("*") in copied, f"{package} is installed but not copied"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied


def test_the_image_runs_as_a_non_root_user_with_its_dirs_as_volumes() -> None:
    instructions = dict(dockerfile_instructions())
    user = instructions["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid, so that Kubernetes' runAsNonRoot can check it"
    env = dockerfile_env()
    volumes = json.loads(instructions["VOLUME"])
    assert env["SLUICE_STATE_DIR"] in volumes
    assert env["SLUICE_CONNECTORS_DIR"] in volumes
    assert {"SLUICE_STATE_DIR", "SLUICE_CONNECTORS_DIR", "SLUICE_CONNECTIONS_FILE"} <= set(env)
    assert set(env) & {n for n in env if n.startswith("SLUICE_")} <= settings_env_names()
