"""The sealed-field keys of the bench's own runs (the example shop declares its card sensitive).

A deployment on PostgreSQL must be given SAGA_FIELD_KEYS and SAGA_FIELD_HASH_KEY (a worker refuses to
start without them, docs/operations/security.md). The bench's scripts set these two for themselves
and their workers when they are not set: bench keys, for bench data, never for anything else.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

BENCH_FIELD_KEYS = {
    "SAGA_FIELD_KEYS": "bench1:1Zw5U9HqI+ggO2tL+yALi09B7O0eeJb5NpgxiH8O3LM=",
    "SAGA_FIELD_HASH_KEY": "mwHr0sll6YjJNZjBHC4oArRSZsRpb+19oNEtGY1XmoA=",
}


def use_bench_field_keys(env: MutableMapping[str, str] = os.environ) -> None:
    """The bench's keys in `env` (this process's environment by default), unless keys are set."""
    for name, value in BENCH_FIELD_KEYS.items():
        env.setdefault(name, value)
