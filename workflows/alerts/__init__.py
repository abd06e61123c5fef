"""Prometheus alert rules for the runs that need a person (`sagas.rules.yml`; docs: operations/alerts)."""
from pathlib import Path

RULES = Path(__file__).with_name("sagas.rules.yml")
"""The rule file's path in the installed package: load it in Prometheus (`rule_files:`)."""

__all__ = ["RULES"]
