"""receiver live state

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 17:10:00
"""
from alembic import op
import sqlalchemy as sa

import fleet_service.db


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('receiver_live_state',
    sa.Column('receiver_id', sa.String(length=64), nullable=False),
    sa.Column('online', sa.Boolean(), nullable=False),
    sa.Column('session', sa.BigInteger(), nullable=True),
    sa.Column('heard_at', fleet_service.db.UTCDateTime(), nullable=True),
    sa.Column('updated_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['receiver_id'], ['receivers.id'], name=op.f('fk_receiver_live_state_receiver_id_receivers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('receiver_id', name=op.f('pk_receiver_live_state'))
    )


def downgrade() -> None:
    op.drop_table('receiver_live_state')
