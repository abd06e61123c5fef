"""The Prometheus alert rules shipped in the package (`workflows/alerts/sagas.rules.yml`): valid
(`promtool check rules`), each alert firing on the series it is about and not on healthy ones
(`promtool test rules` of tests/servers/fixtures/sagas.rules.test.yml), and every metric they name
is one /metrics exports. promtool is Debian's `prometheus` package (.ci/run installs it)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from workflows.alerts import RULES
from workflows.interfaces.metrics import SagaCollector
from workflows.runtime.container import Runtime

RULE_TESTS = Path(__file__).parent / "fixtures" / "sagas.rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: apt-get install -y prometheus (.ci/run installs it)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def test_the_rule_file_is_valid_and_in_the_package() -> None:
    assert RULES.is_file() and RULES.parent.name == "alerts"
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout


def test_each_alert_fires_on_its_series_and_not_otherwise() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert tested == {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


def test_every_metric_the_rules_name_is_exported(tmp_path: Path) -> None:
    from workflows.runtime.settings import Settings
    from workflows.store.db import migrate

    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    rt = Runtime(app=None, settings=Settings(database_url=url, data_dir=tmp_path))
    exported = set()
    for family in SagaCollector(lambda: rt.store).collect():
        exported |= {family.name} | ({f"{family.name}_total"} if family.type == "counter" else set())
    named = set()
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            expr = re.sub(r"\bby \([^)]*\)", "", r["expr"])  # the labels it groups by are not metrics
            named |= set(re.findall(r"\b(sagas?_[a-z_]+)\b", re.sub(r"\{[^}]*\}", "", expr)))
    assert named and named <= exported, named - exported
