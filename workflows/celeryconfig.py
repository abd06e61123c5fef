"""The Celery settings sagas want, from SAGA_* variables with embedded defaults: your app's config.

    app = Celery("shop")
    app.config_from_object("workflows.celeryconfig")   # then app.conf.update(...) for your own
    runtime = workflows.install(app, modules=["shop.sagas"])

Without any variable: kombu's filesystem transport in SAGA_DATA_DIR (no server needed).
Production: SAGA_BROKER_URL=redis://... or amqp://... . Loading it (config_from_object) also
points redis:// URLs at the transport that dead-letters undecodable messages (below).
"""
from kombu import Queue
from kombu.transport import TRANSPORT_ALIASES

from workflows.runtime.settings import get_settings

# redis:// and rediss:// connections use kombu's Redis transport with undecodable messages
# dead-lettered instead of stopping the worker (workflows/runtime/redis_broker.py). By URL scheme,
# not `broker_transport`: an app configured from this module with an amqp:// URL stays on AMQP.
TRANSPORT_ALIASES["redis"] = TRANSPORT_ALIASES["rediss"] = "workflows.runtime.redis_broker:Transport"
TRANSPORT_ALIASES["sentinel"] = "workflows.runtime.redis_broker:SentinelTransport"

_settings = get_settings()

broker_url = _settings.resolved_broker_url()
if broker_url.startswith("filesystem"):
    _folder = _settings.broker_folder()
    broker_transport = "workflows.runtime.fs_broker:Transport"  # kombu's, writing each message atomically
    broker_transport_options = {
        "data_folder_in": str(_folder / "queue"),
        "data_folder_out": str(_folder / "queue"),
        "control_folder": str(_folder / "control"),
        "polling_interval": 0.05,
    }
elif broker_url.startswith(("redis", "sentinel")):
    # Unacked messages (late acks, retries waiting for their countdown) come back after this:
    # it must exceed the longest retry countdown and step time limit. Every consumer scans for
    # them every `unacked_restore_interval` seconds; kombu's default throttle (a real scan every
    # 10th tick) would let a dead worker's message wait up to 100 s more.
    broker_transport_options = {
        "visibility_timeout": _settings.redis_visibility_timeout,
        "unacked_restore_interval": max(1, min(10, _settings.redis_visibility_timeout // 5)),
        "unacked_restore_throttle": 1,
    }
    if broker_url.startswith("sentinel"):
        # kombu asks the sentinels (every one in the URL, `;`-separated) for this master, and again
        # after a failover; workflows.install refuses a sentinel URL without it.
        broker_transport_options["master_name"] = _settings.broker_master_name

broker_connection_retry_on_startup = True

# JSON only: a message is data, never code.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

# The database is the record: no result backend.
result_backend = None
task_ignore_result = True

# Ack after effect: a message is acknowledged once its transition committed and its follow-up
# was published; a worker killed mid-task leads to redelivery.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Retries wait for their countdown in the worker's timer: check it every 0.1s, not every 1s.
worker_timer_precision = 0.1

# The orchestrator's queue; the queues of your step tasks are added by workflows.install(). The
# dead_letter queue is published to, never consumed by a worker.
task_default_queue = "saga"
task_queues = [Queue("saga")]
task_create_missing_queues = True

# Flower: task events, with the saga id as the first argument of every saga task.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True

beat_schedule = {
    "saga-sweep": {"task": "saga.sweep", "schedule": _settings.sweep_interval},
}

worker_hijack_root_logger = False
