"""Alerts: what the rules over events count per receiver and period (boots, stream underruns,
stream bytes)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 07:30:00
"""
from alembic import op
import sqlalchemy as sa

from fleet_service.db import UTCDateTime


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alert_counts',
    sa.Column('receiver_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('period_start', UTCDateTime(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['receiver_id'], ['receivers.id'], name=op.f('fk_alert_counts_receiver_id_receivers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('receiver_id', 'kind', 'period_start', name=op.f('pk_alert_counts'))
    )
    with op.batch_alter_table('alert_counts', schema=None) as batch_op:
        batch_op.create_index('ix_alert_counts_kind_period', ['kind', 'period_start'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('alert_counts', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_counts_kind_period')
    op.drop_table('alert_counts')
