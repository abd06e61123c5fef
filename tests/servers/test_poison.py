"""A message no worker can decode never stops a worker (issue 20): it is kept as a dead letter.

Against the real Redis broker and a real worker (prefork): a body pushed straight onto a queue the
worker consumes that is not JSON at all used to end the worker's main process ("Unrecoverable
error: JSONDecodeError", raised from kombu's Redis transport). Now it is dead-lettered with its raw
text and the reason, and the worker goes on with the next saga.
"""
from __future__ import annotations

import pytest

from tests.support.interfaces import wait_until
from workflows import InvalidOperation, start_saga, wait_for
from workflows.operations.dead_letters import list_dead_letters, redrive

pytestmark = pytest.mark.usefixtures("running_worker")


@pytest.mark.parametrize("raw", [b"\x00\xffnot json{{{", b'{"body": "cut short', b"{}", b"[1]"])
def test_an_undecodable_message_is_dead_lettered_and_the_worker_goes_on(running_worker, redis_client, raw):  # type: ignore[no-untyped-def]
    marker = raw.decode("utf-8", "replace").replace("\x00", "\\x00")  # as kept: NUL spelled out
    if raw in (b"{}", b"[1]"):  # JSON, but no envelope: kept as decoded, re-encoded
        marker = raw.decode()
    before = redis_client.llen("dead_letter")

    # When someone pushes a body that is not JSON onto the tests queue
    redis_client.lpush("tests", raw)

    # Then it is a dead letter with its raw text and the reason, in the table and on the broker ...
    def found():  # type: ignore[no-untyped-def]
        return [d for d in list_dead_letters(limit=1000) if d.kind == "message" and d.kwargs.get("raw") == marker]

    [dl] = wait_until(found, 30, "the undecodable message was not dead-lettered")
    reason = "not a kombu message envelope" if raw in (b"{}", b"[1]") else "the message body is not JSON"
    assert dl.exception.startswith("UndecodableMessage: ") and reason in dl.exception and dl.saga_id is None
    wait_until(lambda: redis_client.llen("dead_letter") > before, 10, "no broker copy of the dead letter")
    with pytest.raises(InvalidOperation, match="cannot be redriven"):
        redrive(dl.id)

    # ... and the worker is still there: the next saga on the same queue completes
    assert running_worker.proc.poll() is None
    assert wait_for(start_saga("tests.three", {}), timeout=30).state == "COMPLETED"
    assert running_worker.proc.poll() is None
