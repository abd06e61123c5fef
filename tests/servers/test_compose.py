"""docker-compose.yml runs the whole system: servers, migrations, three worker pools, beat, Flower, API,
and Jaeger, the tracing backend every saga service sends its traces to.

No Docker daemon is needed: the YAML is read as compose reads it, and `docker-compose config`
(or `docker compose config`) validates it when either is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.common import SERVICES
from workflows.install import ORCHESTRATOR_QUEUE

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = {"migrate", "worker-orchestrator", "worker-services", "worker-events", "beat", "flower", "api",
                "kafka-commands", "payment-service"}
POOLS = ("worker-orchestrator", "worker-services", "worker-events")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # resolves the << merge keys


def queues_of(command: list[str]) -> set[str]:
    return set(command[command.index("-Q") + 1].split(","))


def test_compose_declares_every_service(compose):  # type: ignore[no-untyped-def]
    assert set(compose["services"]) == {"redis", "postgres", "kafka", "jaeger", *APP_SERVICES}


def test_every_saga_service_runs_the_image_built_here_against_the_same_servers(compose):  # type: ignore[no-untyped-def]
    for name in APP_SERVICES:
        service = compose["services"][name]
        env = service["environment"]
        assert service["build"] == "." and service["image"] == "celery-sagas:latest", name
        assert env["SAGA_DATABASE_URL"].startswith("postgresql+psycopg://sagas:sagas@postgres:5432/"), name
        assert env["SAGA_BROKER_URL"].startswith("redis://redis:6379/"), name
        assert "SAGA_API_TOKEN" in env and "SAGA_TEST_MODE" in env, name
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
        if name != "migrate":
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
            assert service["depends_on"]["redis"] == {"condition": "service_healthy"}, name


def test_migrate_is_a_one_shot_of_the_saga_tables_and_the_shops(compose):  # type: ignore[no-untyped-def]
    migrate = compose["services"]["migrate"]

    # tasks/schema.py: `sagas migrate`'s migrations (workflows.store.db.migrate), then the shop's tables
    assert migrate["command"] == ["python", "-m", "tasks.schema"]
    assert migrate["restart"] == "no"
    schema = (ROOT / "tasks" / "schema.py").read_text()
    assert "from workflows.store.db import migrate as migrate_saga_tables" in schema
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sagas"] == "workflows.interfaces.cli:main"


def test_the_worker_pools_consume_every_queue_a_task_is_sent_to(compose, tmp_path):  # type: ignore[no-untyped-def]
    import json
    import os
    import sys

    services = compose["services"]
    commands = [services[name]["command"] for name in POOLS]
    # the queues of the production app: worker.py with compose's settings (none of the tests'
    # SAGA_* variables: their extra modules, their event namespace)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}, "SAGA_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "import json, worker; print(json.dumps(sorted({t.queue for t in "
                          "worker.app.tasks.values() if getattr(t, 'queue', None)})))"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    sent_to = set(json.loads(out.strip().splitlines()[-1]))

    assert all(c[:4] == ["celery", "-A", "worker", "worker"] for c in commands)
    assert queues_of(commands[0]) == {ORCHESTRATOR_QUEUE} and queues_of(commands[1]) == set(SERVICES)
    assert set().union(*map(queues_of, commands)) == sent_to  # the choreography's events.* too
    names = [c[c.index("-n") + 1] for c in commands]
    assert len(set(names)) == len(names)  # distinct node names, so Flower tells them apart


def test_beat_flower_and_api_commands(compose):  # type: ignore[no-untyped-def]
    services = compose["services"]

    assert services["beat"]["command"][:4] == ["celery", "-A", "worker", "beat"]
    flower = services["flower"]
    assert flower["command"][:4] == ["celery", "-A", "worker", "flower"] and "--port=5555" in flower["command"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].count(":") >= 1  # Flower's API needs auth (or the flag)
    assert flower["environment"]["SAGA_BROKER_URL"] == services["api"]["environment"]["SAGA_BROKER_URL"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    api = services["api"]
    assert api["command"] == ["uvicorn", "api:app", "--host", "0.0.0.0", "--port", "8000"]
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])


def test_the_payment_service_serves_its_failure_switch_on_port_8001(compose):  # type: ignore[no-untyped-def]
    payment = compose["services"]["payment-service"]

    # the seed's `curl -X POST http://localhost:8001/api/test/fail-next-request` reaches it
    assert payment["command"] == ["uvicorn", "tasks.payment_service:app", "--host", "0.0.0.0", "--port", "8001"]
    assert payment["ports"] == ["127.0.0.1:8001:8001"]
    assert payment["environment"]["SAGA_TEST_MODE"] == "${SAGA_TEST_MODE:-true}"  # the switch exists in test mode only
    assert "/healthz" in " ".join(payment["healthcheck"]["test"])
    # it arms a row of the shop's database the services' workers read: the same database as theirs
    assert payment["environment"]["SAGA_DATABASE_URL"] == compose["services"]["worker-services"]["environment"][
        "SAGA_DATABASE_URL"]


def test_every_saga_service_sends_its_traces_to_jaeger_over_otlp(compose):  # type: ignore[no-untyped-def]
    services = compose["services"]
    jaeger = services["jaeger"]

    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert jaeger["ports"] == ["127.0.0.1:16686:16686"]  # its UI, on the loopback interface only
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["SAGA_TRACING"] == "${SAGA_TRACING:-otel}", name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", name  # OTLP/HTTP, the extra's exporter
        # a tracing backend that is down never stops a saga: nothing waits for it
        assert "jaeger" not in services[name]["depends_on"], name
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("opentelemetry-exporter-otlp-proto-http") for d in extras["otel"])


def test_servers_have_health_checks_the_others_wait_for(compose):  # type: ignore[no-untyped-def]
    services = compose["services"]

    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "sagas"


def test_a_real_apache_kafka_serves_saga_events_and_commands(compose):  # type: ignore[no-untyped-def]
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].startswith("PLAINTEXT://kafka:9092")
    assert services["kafka-commands"]["command"] == ["sagas", "kafka-commands"]
    assert services["kafka-commands"]["depends_on"]["kafka"] == {"condition": "service_healthy"}
    env = services["worker-services"]["environment"]
    assert env["SAGA_KAFKA_BOOTSTRAP_SERVERS"].endswith("kafka:9092}")
    assert env["SAGA_REDIS_READ_MODEL_URL"].endswith("redis://redis:6379/2}")


def test_dockerfile_installs_the_project_on_python_3_11_slim():  # type: ignore[no-untyped-def]
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]

    assert "FROM python:3.11-slim" in lines
    # the wheel is the library: the deployment's driver, API, Flower, Kafka client and tracing come as extras
    assert any(line.startswith('RUN pip install ".[postgres,api,flower,kafka,otel]"') for line in lines)
    assert "PYTHONPATH=/app \\" in lines


def test_the_wheel_is_the_library_with_its_migrations_and_not_the_example(tmp_path):  # type: ignore[no-untyped-def]
    import zipfile

    from tests.support.wheel import build_wheel

    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"workflows/store/migrations/env.py", "workflows/store/migrations/script.py.mako",
            "workflows/store/migrations/versions/0001_initial_schema.py", "workflows/py.typed",
            "workflows/interfaces/console/templates/_macros.html",
            "workflows/interfaces/console/static/console.js"} <= names
    # `sagas migrate` after `pip install`: the migrations import nothing but the library
    assert "tasks" not in zipfile.ZipFile(wheel).read("workflows/store/migrations/env.py").decode()
    top = {name.split("/")[0] for name in names if not name.startswith("celery_sagas-")}
    assert top == {"workflows"}, top  # no tasks/, worker.py, api.py, celeryconfig.py


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def test_docker_compose_config_accepts_the_file(compose):  # type: ignore[no-untyped-def]
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed (the YAML checks above ran)")

    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}  # compose's own defaults
    done = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == set(compose["services"])
    assert resolved["services"]["worker-services"]["command"] == compose["services"]["worker-services"]["command"]
    assert resolved["services"]["payment-service"]["environment"]["SAGA_TEST_MODE"] == "true"
    assert resolved["services"]["flower"]["environment"]["SAGA_DATABASE_URL"].startswith("postgresql+psycopg://")
