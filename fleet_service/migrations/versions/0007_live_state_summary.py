"""live state: telemetry summary, play status; the leading worker's status

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 20:40:00
"""
from alembic import op
import sqlalchemy as sa

import fleet_service.db


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('receiver_live_state') as batch:
        batch.add_column(sa.Column('telemetry_at', fleet_service.db.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column('signal_dbm', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('temperature_c', sa.Double(), nullable=True))
        batch.add_column(sa.Column('supply_v', sa.Double(), nullable=True))
        batch.add_column(sa.Column('amplifier', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('stream', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('firmware', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('clock_skew_s', sa.Double(), nullable=True))
        batch.add_column(sa.Column('schedule_version', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('playing', sa.JSON(), nullable=True))
    op.create_table('worker_status',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('holder', sa.String(length=100), nullable=False),
    sa.Column('status', sa.JSON(), nullable=False),
    sa.Column('updated_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_worker_status'))
    )


def downgrade() -> None:
    op.drop_table('worker_status')
    with op.batch_alter_table('receiver_live_state') as batch:
        for column in ('playing', 'schedule_version', 'clock_skew_s', 'firmware', 'stream', 'amplifier',
                       'supply_v', 'temperature_c', 'signal_dbm', 'telemetry_at'):
            batch.drop_column(column)
