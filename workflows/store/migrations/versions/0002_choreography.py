"""choreography: the transactional outbox of the event bus

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 00:00:00
"""
from alembic import op
import sqlalchemy as sa
import workflows.store.models
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('event_outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('saga_id', sa.String(length=64), nullable=False),
    sa.Column('saga_type', sa.String(length=100), nullable=False),
    sa.Column('event_type', sa.String(length=100), nullable=False),
    sa.Column('causation_id', sa.String(length=64), nullable=True),
    sa.Column('source', sa.String(length=100), nullable=False),
    sa.Column('envelope', JSON, nullable=False),
    sa.Column('targets', JSON, nullable=False),
    sa.Column('created_at', workflows.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', workflows.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('event_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_event_outbox_unsent', ['sent_at', 'id'], unique=False)
        batch_op.create_index('ix_event_outbox_saga', ['saga_id', 'id'], unique=False)
        batch_op.create_index('ix_event_outbox_causation', ['causation_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('event_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_event_outbox_causation')
        batch_op.drop_index('ix_event_outbox_saga')
        batch_op.drop_index('ix_event_outbox_unsent')
    op.drop_table('event_outbox')
