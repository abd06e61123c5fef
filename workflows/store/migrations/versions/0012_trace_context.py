"""the run's current trace segment (sagas.trace_context)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 00:00:00

With tracing on (`SAGA_TRACING=otel`), the W3C `traceparent` of the span that began the run's
current trace segment: its start, or its latest resumption after it parked (a signal, the
sweeper, an operator). A resumption begins a new trace linked to it. Written with the run's own
transitions (the same UPDATE), never on its own; NULL with tracing off.
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sagas') as batch:
        batch.add_column(sa.Column('trace_context', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sagas') as batch:
        batch.drop_column('trace_context')
