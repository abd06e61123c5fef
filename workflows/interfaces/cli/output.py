"""What every `sagas` command shares: the terminal, its styles, and reading --data."""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from workflows.core.sealed import masked

STATE_STYLE = {"RUNNING": "cyan", "WAITING": "blue", "SCHEDULED": "dim cyan",
               "COMPENSATING": "magenta", "COMPLETED": "green", "COMPENSATED": "yellow",
               "FAILED": "bold red", "SUCCEEDED": "green", "PENDING": "dim", "TIMED_OUT": "red",
               "COMPENSATION_FAILED": "bold red", "OPEN": "bold red", "REDRIVEN": "green", "DISCARDED": "dim"}


def runtime() -> Any:
    """The saga runtime of the --app module, imported on first use (`main` puts the loader in the
    root context, so the commands never import the module themselves)."""
    return click.get_current_context().find_root().obj["runtime"]()


def console() -> Console:
    """The terminal's width; piped, 160 columns unless COLUMNS says otherwise."""
    return Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(masked(value), indent=2, default=str))


def styled(value: str | None) -> Text:
    return Text(value or "", style=STATE_STYLE.get(value or "", ""))


def time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


def span(seconds: float) -> str:
    """A duration in a few characters: 12ms, 3.4s, 4m03s, 2h05m, 3d04h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def since(value: datetime | None, origin: datetime) -> str:
    """`value` as an offset from `origin` (the run's start): +3.4s."""
    return "+" + span(max((value - origin).total_seconds(), 0.0)) if value else ""


def short(value: Any, width: int = 70) -> str:
    s = value if isinstance(value, str) else json.dumps(masked(value), default=str, separators=(",", ":"),
                                                        ensure_ascii=False)
    return s if len(s) <= width else s[: width - 1] + "…"


def load_data(raw: str) -> Any:
    if raw == "-":
        raw = sys.stdin.read()
    elif raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as f:
                raw = f.read()
        except OSError as e:
            raise click.BadParameter(f"cannot read {raw[1:]}: {e.strerror}", param_hint="--data") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e})", param_hint="--data") from None


def acted(view: Any, verb: str) -> None:
    line = Text(f"saga {view.id} {verb}: now ")
    line.append_text(styled(view.state))
    console().print(line)
