"""per-person credentials with roles, the access audit, console sessions, and who started a run

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 00:00:00

`credentials` holds each token's keyed lookup hash (never the token), its name and role;
`access_audit` every action through the API or the console, allowed or refused, with the
authenticated name; `console_sessions` the console's logins with a credential; `sagas.started_by`
the credential that started a run (a service credential reads only its own). Additive: a worker
of the previous release runs unchanged on it.
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column('sagas', sa.Column('started_by', sa.String(100), nullable=True))
    op.create_table(
        'credentials',
        sa.Column('id', sa.String(32), primary_key=True),
        sa.Column('name', sa.String(100), nullable=False),
        sa.Column('role', sa.String(20), nullable=False),
        sa.Column('token_hash', sa.String(64), nullable=False),
        sa.Column('created_at', UTC, nullable=False),
        sa.Column('created_by', sa.String(100), nullable=False),
        sa.Column('expires_at', UTC, nullable=True),
        sa.Column('revoked_at', UTC, nullable=True),
    )
    op.create_index('uq_credentials_token_hash', 'credentials', ['token_hash'], unique=True)
    op.create_index('uq_credentials_active_name', 'credentials', ['name'], unique=True,
                    postgresql_where=sa.text('revoked_at IS NULL'), sqlite_where=sa.text('revoked_at IS NULL'))
    op.create_table(
        'access_audit',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), primary_key=True, autoincrement=True),
        sa.Column('at', UTC, nullable=False),
        sa.Column('who', sa.String(100), nullable=False),
        sa.Column('role', sa.String(20), nullable=True),
        sa.Column('action', sa.String(60), nullable=False),
        sa.Column('target', sa.String(200), nullable=True),
        sa.Column('outcome', sa.String(20), nullable=False),
        sa.Column('address', sa.String(100), nullable=True),
        sa.Column('note', sa.String(200), nullable=True),
    )
    op.create_index('ix_access_audit_at', 'access_audit', ['at'])
    op.create_index('ix_access_audit_login', 'access_audit', ['action', 'outcome', 'at'])
    op.create_table(
        'console_sessions',
        sa.Column('id_hash', sa.String(64), primary_key=True),
        sa.Column('credential_id', sa.String(32), nullable=False),
        sa.Column('created_at', UTC, nullable=False),
        sa.Column('expires_at', UTC, nullable=False),
    )


def downgrade() -> None:
    op.drop_table('console_sessions')
    op.drop_index('ix_access_audit_login', 'access_audit')
    op.drop_index('ix_access_audit_at', 'access_audit')
    op.drop_table('access_audit')
    op.drop_index('uq_credentials_active_name', 'credentials')
    op.drop_index('uq_credentials_token_hash', 'credentials')
    op.drop_table('credentials')
    with op.batch_alter_table('sagas') as batch:
        batch.drop_column('started_by')
