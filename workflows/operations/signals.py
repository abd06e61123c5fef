"""Signals: what a person or a service sends to a run that waits (`Wait`), from Python, the API or the CLI.

    signal(saga_id, "approval", {"approved": True}, idempotency_key="approval-1001", who="alice")

The function lives in `workflows.runtime.signals`, below the choreography, which sends a matching
event to a run's wait through it (`OnEvent`); this is its operator-facing name.
"""
from workflows.runtime.signals import signal

__all__ = ["signal"]
