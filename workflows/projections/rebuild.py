"""`sagas redis-rebuild`: the Redis read model written again from the database (the record)."""
from __future__ import annotations

from collections.abc import Callable

from workflows.core.errors import SagaError, SagaNotFound
from workflows.projections.redis_hash import RedisHashSink
from workflows.projections.views import hash_of
from workflows.runtime.container import Runtime


def rebuild_read_model(rt: Runtime, *, saga_id: str | None = None, batch: int = 500,
                       progress: Callable[[int], None] | None = None) -> int:
    """Write `saga:<id>` of every orchestrated run (or of `saga_id`) from the database; returns how
    many. A hash newer than the run as read here (a worker's update meanwhile) is left as it is."""
    url = rt.settings.redis_read_model_url
    if not url:
        raise SagaError("SAGA_REDIS_READ_MODEL_URL is not set: there is no read model to rebuild")
    sink = RedisHashSink(url, ttl=rt.settings.redis_read_model_ttl)
    store = rt.store
    try:
        if saga_id is not None:
            view = store.get(saga_id)
            sink.write(saga_id, hash_of(store.load(saga_id), view.updated_at))
            return 1
        done, after = 0, ""
        while page := store.run_pages(after, batch):  # type: ignore[attr-defined]
            pipe = sink.client.pipeline(transaction=False)
            for run_id, updated_at in page:
                try:
                    sink.write(run_id, hash_of(store.load(run_id), updated_at), pipe)
                except SagaNotFound:
                    continue  # pruned meanwhile
            pipe.execute()
            done += len(page)
            after = page[-1][0]
            if progress is not None:
                progress(done)
        return done
    finally:
        sink.close()
