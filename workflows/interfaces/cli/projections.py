"""`sagas kafka-commands|redis-rebuild`: the Kafka commands consumer and the read model's rebuild."""
from __future__ import annotations

import click

from workflows.interfaces.cli.output import runtime


@click.command("kafka-commands")
@click.option("--max-messages", type=int, default=None, help="Stop after this many messages (tests, scripts).")
def kafka_commands(max_messages: int | None) -> None:
    """Consume the saga-commands topic (SAGA_KAFKA_*): start, signal, cancel; a message that is
    not a command is kept as a dead letter (`sagas dlq list`). Runs until interrupted."""
    from workflows.interfaces.kafka_commands import Handled, consume

    count = 0

    def handled(done: Handled) -> None:
        nonlocal count
        count += 1
        click.echo(f"{done.what} {done.saga_id or '-'} {done.detail}".rstrip())

    rt = runtime()
    click.echo(f"consuming {rt.settings.kafka_commands_topic} on {rt.settings.kafka_bootstrap_servers}", err=True)
    try:
        consume(rt, stop=lambda: max_messages is not None and count >= max_messages, on_handled=handled)
    except KeyboardInterrupt:
        pass


@click.command("redis-rebuild")
@click.option("--saga-id", default=None, help="Only this run.")
def redis_rebuild(saga_id: str | None) -> None:
    """Write the Redis read model (`HGETALL saga:<id>`) again from the database, every run or one."""
    from workflows.projections.rebuild import rebuild_read_model

    n = rebuild_read_model(runtime(), saga_id=saga_id)
    click.echo(f"{n} run(s) written to the read model")


COMMANDS = (kafka_commands, redis_rebuild)
