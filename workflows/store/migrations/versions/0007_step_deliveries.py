"""saga_steps: redeliveries of a step's action and compensation messages (a worker lost), counted
before the function runs again

Revision ID: 0007
Revises: 0003
Create Date: 2026-12-02 00:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('saga_steps') as batch:
        batch.add_column(sa.Column('redeliveries', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('compensation_redeliveries', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('saga_steps') as batch:
        batch.drop_column('compensation_redeliveries')
        batch.drop_column('redeliveries')
