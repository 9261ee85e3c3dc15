"""outbox and the worker lease

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 17:00:00
"""
from alembic import op
import sqlalchemy as sa

import fleet_service.db


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('subject', sa.String(length=100), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.Column('available_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('done_at', fleet_service.db.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox'))
    )
    op.create_index('ix_outbox_pending', 'outbox', ['done_at', 'id'], unique=False)
    op.create_table('worker_leases',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('holder', sa.String(length=100), nullable=False),
    sa.Column('renewed_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.Column('expires_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_worker_leases'))
    )


def downgrade() -> None:
    op.drop_table('worker_leases')
    op.drop_index('ix_outbox_pending', table_name='outbox')
    op.drop_table('outbox')
