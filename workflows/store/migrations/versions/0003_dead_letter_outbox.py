"""dead letters: the broker copy is published after commit and marked sent (sent_at)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:00:00
"""
from alembic import op
import sqlalchemy as sa
import workflows.store.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dead_letters') as batch:
        batch.add_column(sa.Column('sent_at', workflows.store.models.UTCDateTime(timezone=True), nullable=True))
    # Rows written before this revision were copied to the broker inside their transaction.
    op.execute("UPDATE dead_letters SET sent_at = created_at")
    op.create_index('ix_dead_letters_unsent', 'dead_letters', ['sent_at', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_dead_letters_unsent', table_name='dead_letters')
    with op.batch_alter_table('dead_letters') as batch:
        batch.drop_column('sent_at')
