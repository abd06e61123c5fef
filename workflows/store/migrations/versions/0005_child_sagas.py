"""child sagas: a run records the parent run and the parent's step that started it

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-02 00:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sagas') as batch:
        batch.add_column(sa.Column('parent_id', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('parent_step', sa.String(length=100), nullable=True))
    op.create_index('ix_sagas_parent', 'sagas', ['parent_id'])


def downgrade() -> None:
    op.drop_index('ix_sagas_parent', table_name='sagas')
    with op.batch_alter_table('sagas') as batch:
        batch.drop_column('parent_step')
        batch.drop_column('parent_id')
