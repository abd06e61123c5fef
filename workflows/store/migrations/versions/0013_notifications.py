"""saga_notifications, saga_notification_attempts: events that need a person, and their delivery

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 00:00:00

One row per event (a FAILED run, a dead letter, a lost worker, no progress past the saga's bound),
keyed by its dedup key `<kind>:<saga id>:<run version or dead letter id>`: recorded once, delivered
to the webhook at least once (retried with backoff), every attempt kept.
"""
import sqlalchemy as sa
from alembic import op

from workflows.store.models import BigId, JSONType, UTCDateTime

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'saga_notifications',
        sa.Column('id', sa.String(200), primary_key=True),
        sa.Column('kind', sa.String(30), nullable=False),
        sa.Column('saga_id', sa.String(64), nullable=False),
        sa.Column('saga_type', sa.String(100), nullable=False),
        sa.Column('body', JSONType, nullable=False),
        sa.Column('state', sa.String(20), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('delivered_at', UTCDateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_saga_notifications_due', 'saga_notifications', ['state', 'next_attempt_at'])
    op.create_index('ix_saga_notifications_saga', 'saga_notifications', ['saga_id', 'created_at'])
    op.create_table(
        'saga_notification_attempts',
        sa.Column('id', BigId, primary_key=True, autoincrement=True),
        sa.Column('notification_id', sa.String(200), nullable=False),
        sa.Column('target', sa.String(20), nullable=False),
        sa.Column('at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
    )
    op.create_index('ix_saga_notification_attempts_notification', 'saga_notification_attempts',
                    ['notification_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_saga_notification_attempts_notification', table_name='saga_notification_attempts')
    op.drop_table('saga_notification_attempts')
    op.drop_index('ix_saga_notifications_saga', table_name='saga_notifications')
    op.drop_index('ix_saga_notifications_due', table_name='saga_notifications')
    op.drop_table('saga_notifications')
