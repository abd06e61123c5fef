"""console: indexes for the saga list (newest first, by state or type) and the business-key search

Revision ID: 0008
Revises: 0003
Create Date: 2026-12-02 00:00:00

Every indexed column here is written once, when the run is created (`created_at`, `input`), or
is indexed already (`state`, `saga_type`), so the hot path's per-step UPDATE of `sagas` stays a
heap-only update. The GIN index on `input` (PostgreSQL only) serves `input @> '{"order_id": ...}'`.
"""
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_sagas_created', 'sagas', ['created_at', 'id'])
    op.create_index('ix_sagas_state_created', 'sagas', ['state', 'created_at'])
    op.create_index('ix_sagas_type_created', 'sagas', ['saga_type', 'created_at'])
    if op.get_context().dialect.name == 'postgresql':
        op.create_index('ix_sagas_input', 'sagas', ['input'], postgresql_using='gin',
                        postgresql_ops={'input': 'jsonb_path_ops'})


def downgrade() -> None:
    if op.get_context().dialect.name == 'postgresql':
        op.drop_index('ix_sagas_input', table_name='sagas')
    op.drop_index('ix_sagas_type_created', table_name='sagas')
    op.drop_index('ix_sagas_state_created', table_name='sagas')
    op.drop_index('ix_sagas_created', table_name='sagas')
