"""waits and signals: the saga_signals table, kept signals counted on the run, scheduled starts found by state

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:00:00
"""
from alembic import op
import sqlalchemy as sa
import workflows.store.models
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'saga_signals',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('saga_id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), 'postgresql'),
                  nullable=False),
        sa.Column('idempotency_key', sa.String(length=200), nullable=False),
        sa.Column('who', sa.String(length=200), nullable=False),
        sa.Column('received_at', workflows.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('consumed_by', sa.String(length=100), nullable=True),
        sa.Column('consumed_at', workflows.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['saga_id'], ['sagas.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('saga_id', 'idempotency_key', name='uq_saga_signals_key'),
    )
    op.create_index('ix_saga_signals_saga', 'saga_signals', ['saga_id', 'received_at'])
    with op.batch_alter_table('sagas') as batch:
        batch.add_column(sa.Column('signals_pending', sa.Integer(), nullable=False, server_default='0'))
    op.create_index('ix_sagas_state_deadline', 'sagas', ['state', 'deadline_at'])


def downgrade() -> None:
    op.drop_index('ix_sagas_state_deadline', table_name='sagas')
    with op.batch_alter_table('sagas') as batch:
        batch.drop_column('signals_pending')
    op.drop_index('ix_saga_signals_saga', table_name='saga_signals')
    op.drop_table('saga_signals')
