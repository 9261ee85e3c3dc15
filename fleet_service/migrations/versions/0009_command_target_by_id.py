"""commands reference their target by id only

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The copied region path went stale when a region moved (as schedules' did, 0006): the
    # target is kept by id in a column of its kind, and its path is looked up when needed.
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target_region_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('target_station_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('target_receiver_id', sa.String(length=64), nullable=True))
    # target_ref held the id as text, whatever the kind; "" for the whole fleet.
    op.execute("UPDATE commands SET target_region_id = CAST(target_ref AS INTEGER) WHERE target_kind = 'region'")
    op.execute("UPDATE commands SET target_station_id = CAST(target_ref AS INTEGER) WHERE target_kind = 'station'")
    op.execute("UPDATE commands SET target_receiver_id = target_ref WHERE target_kind = 'receiver'")
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_commands_target_path'))
        batch_op.drop_column('target_path')
        batch_op.drop_column('target_ref')
        batch_op.create_index(batch_op.f('ix_commands_target_region_id'), ['target_region_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_commands_target_station_id'), ['target_station_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_commands_target_receiver_id'), ['target_receiver_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target_ref', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('target_path', sa.String(length=1000), nullable=True))
    op.execute(
        "UPDATE commands SET target_ref = COALESCE(target_receiver_id, CAST(target_station_id AS VARCHAR(64)), "
        "CAST(target_region_id AS VARCHAR(64)), '')")
    # The path as it is now (the best a downgrade can do); "/" for the fleet or a target gone.
    op.execute(
        "UPDATE commands SET target_path = CASE target_kind "
        "WHEN 'region' THEN (SELECT regions.path FROM regions WHERE regions.id = commands.target_region_id) "
        "WHEN 'station' THEN (SELECT regions.path FROM stations JOIN regions ON regions.id = stations.region_id "
        "WHERE stations.id = commands.target_station_id) "
        "WHEN 'receiver' THEN (SELECT regions.path FROM receivers JOIN stations ON stations.id = receivers.station_id "
        "JOIN regions ON regions.id = stations.region_id WHERE receivers.id = commands.target_receiver_id) END")
    op.execute("UPDATE commands SET target_path = '/' WHERE target_path IS NULL")
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_commands_target_receiver_id'))
        batch_op.drop_index(batch_op.f('ix_commands_target_station_id'))
        batch_op.drop_index(batch_op.f('ix_commands_target_region_id'))
        batch_op.alter_column('target_ref', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('target_path', existing_type=sa.String(length=1000), nullable=False)
        batch_op.create_index(batch_op.f('ix_commands_target_path'), ['target_path'], unique=False)
        batch_op.drop_column('target_receiver_id')
        batch_op.drop_column('target_station_id')
        batch_op.drop_column('target_region_id')
