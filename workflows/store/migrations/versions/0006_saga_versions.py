"""versioned saga definitions: the version a run started with, worker heartbeats, recorded shapes,
parked steps

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-02 00:00:00
"""
from alembic import op
import sqlalchemy as sa
import workflows.store.models

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Runs written before versions existed were all started on version 1.
    with op.batch_alter_table('sagas') as batch:
        batch.add_column(sa.Column('saga_version', sa.Integer(), nullable=False, server_default='1'))
    op.create_index('ix_sagas_type_version_state', 'sagas', ['saga_type', 'saga_version', 'state'])
    op.create_table(
        'saga_workers',
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('versions', workflows.store.models.JSONType, nullable=False),
        sa.Column('started_at', workflows.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('seen_at', workflows.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_table(
        'saga_parked_steps',
        sa.Column('saga_id', sa.String(length=64), nullable=False),
        sa.Column('task_id', sa.String(length=200), nullable=False),
        sa.Column('saga_type', sa.String(length=100), nullable=False),
        sa.Column('saga_version', sa.Integer(), nullable=False),
        sa.Column('step', sa.String(length=100), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('parked_at', workflows.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('saga_id', 'task_id'),
    )
    op.create_table(
        'saga_definitions',
        sa.Column('saga_type', sa.String(length=100), nullable=False),
        sa.Column('saga_version', sa.Integer(), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('shape', workflows.store.models.JSONType, nullable=False),
        sa.Column('first_seen', workflows.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('saga_type', 'saga_version'),
    )


def downgrade() -> None:
    op.drop_table('saga_definitions')
    op.drop_table('saga_parked_steps')
    op.drop_table('saga_workers')
    op.drop_index('ix_sagas_type_version_state', table_name='sagas')
    with op.batch_alter_table('sagas') as batch:
        batch.drop_column('saga_version')
