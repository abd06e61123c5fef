"""projection_outbox: the records of after-commit projections (Kafka saga-events, the Redis read
model) still to send

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 00:00:00

Written in a transition's own atomic write when a projection is configured, deleted once sent;
empty (and never written) otherwise.
"""
from alembic import op
import sqlalchemy as sa

from workflows.store.models import JSONType, UTCDateTime

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'projection_outbox',
        sa.Column('id', sa.String(200), primary_key=True),
        sa.Column('projection', sa.String(60), nullable=False),
        sa.Column('saga_id', sa.String(64), nullable=False),
        sa.Column('body', JSONType, nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_projection_outbox_created', 'projection_outbox', ['created_at'])


def downgrade() -> None:
    op.drop_index('ix_projection_outbox_created', table_name='projection_outbox')
    op.drop_table('projection_outbox')
