"""commands and schedules

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:08:27.196424
"""
from alembic import op
import sqlalchemy as sa

import fleet_service.db


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('schedules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('target_kind', sa.String(length=16), nullable=False),
    sa.Column('target_id', sa.Integer(), nullable=False),
    sa.Column('target_path', sa.String(length=1000), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedules'))
    )
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_schedules_target_path'), ['target_path'], unique=False)

    op.create_table('schedule_slots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('schedule_id', sa.Integer(), nullable=False),
    sa.Column('start', sa.String(length=8), nullable=False),
    sa.Column('end', sa.String(length=8), nullable=False),
    sa.Column('days', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(length=256), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('valid_from', sa.Date(), nullable=True),
    sa.Column('valid_to', sa.Date(), nullable=True),
    sa.Column('volume', sa.Integer(), nullable=True),
    sa.Column('label', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'], name=op.f('fk_schedule_slots_schedule_id_schedules'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_schedule_slots'))
    )
    with op.batch_alter_table('schedule_slots', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_schedule_slots_schedule_id'), ['schedule_id'], unique=False)

    op.create_table('commands',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('op', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('target_kind', sa.String(length=16), nullable=False),
    sa.Column('target_ref', sa.String(length=64), nullable=False),
    sa.Column('target_name', sa.String(length=300), nullable=False),
    sa.Column('target_path', sa.String(length=1000), nullable=False),
    sa.Column('issued_by', sa.Integer(), nullable=True),
    sa.Column('issuer_name', sa.String(length=100), nullable=False),
    sa.Column('issued_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.Column('expires_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.Column('note', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['issued_by'], ['users.id'], name=op.f('fk_commands_issued_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_commands'))
    )
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.create_index('ix_commands_issued_at', ['issued_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_commands_target_path'), ['target_path'], unique=False)

    op.create_table('command_targets',
    sa.Column('command_id', sa.String(length=32), nullable=False),
    sa.Column('receiver_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('deliveries', sa.Integer(), nullable=False),
    sa.Column('first_sent_at', fleet_service.db.UTCDateTime(), nullable=True),
    sa.Column('accepted_at', fleet_service.db.UTCDateTime(), nullable=True),
    sa.Column('finished_at', fleet_service.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['command_id'], ['commands.id'], name=op.f('fk_command_targets_command_id_commands'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['receiver_id'], ['receivers.id'], name=op.f('fk_command_targets_receiver_id_receivers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('command_id', 'receiver_id', name=op.f('pk_command_targets'))
    )
    with op.batch_alter_table('command_targets', schema=None) as batch_op:
        batch_op.create_index('ix_command_targets_receiver_status', ['receiver_id', 'status'], unique=False)

    op.create_table('receiver_schedules',
    sa.Column('receiver_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('command_id', sa.String(length=32), nullable=False),
    sa.Column('sent_at', fleet_service.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['receiver_id'], ['receivers.id'], name=op.f('fk_receiver_schedules_receiver_id_receivers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('receiver_id', name=op.f('pk_receiver_schedules'))
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('emergency', sa.Boolean(), server_default=sa.false(), nullable=False))




def downgrade() -> None:

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('emergency')

    op.drop_table('receiver_schedules')
    with op.batch_alter_table('command_targets', schema=None) as batch_op:
        batch_op.drop_index('ix_command_targets_receiver_status')

    op.drop_table('command_targets')
    with op.batch_alter_table('commands', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_commands_target_path'))
        batch_op.drop_index('ix_commands_issued_at')

    op.drop_table('commands')
    with op.batch_alter_table('schedule_slots', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_schedule_slots_schedule_id'))

    op.drop_table('schedule_slots')
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_schedules_target_path'))

    op.drop_table('schedules')

