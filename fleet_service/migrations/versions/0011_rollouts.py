"""Rollouts: a firmware release offered to receivers in waves, each receiver's place in one, the
firmware bytes served to each receiver, and each receiver's hardware family in its live state

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 00:00:00
"""
from alembic import op
import sqlalchemy as sa

from fleet_service.db import UTCDateTime


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'rollouts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('release_id', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('state_reason', sa.String(length=500), nullable=True),
        sa.Column('target_summary', sa.String(length=500), nullable=False),
        sa.Column('waves', sa.JSON(), nullable=False),
        sa.Column('wave_count', sa.Integer(), nullable=False),
        sa.Column('current_wave', sa.Integer(), nullable=False),
        sa.Column('success_percent', sa.Integer(), nullable=False),
        sa.Column('error_percent', sa.Integer(), nullable=False),
        sa.Column('min_finished', sa.Integer(), nullable=False),
        sa.Column('step_timeout_s', sa.Integer(), nullable=False),
        sa.Column('per_minute', sa.Integer(), nullable=False),
        sa.Column('jitter_s', sa.Integer(), nullable=False),
        sa.Column('window_start', sa.String(length=5), nullable=True),
        sa.Column('window_end', sa.String(length=5), nullable=True),
        sa.Column('window_days', sa.Integer(), nullable=True),
        sa.Column('force', sa.Boolean(), nullable=False),
        sa.Column('created_by', sa.Integer(), nullable=True),
        sa.Column('creator_name', sa.String(length=100), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.Column('finished_at', UTCDateTime(), nullable=True),
        sa.Column('paced_from', UTCDateTime(), nullable=True),
        sa.Column('offered_since_paced', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['release_id'], ['firmware_releases.id'],
                                name=op.f('fk_rollouts_release_id_firmware_releases'), ondelete='RESTRICT'),
        sa.ForeignKeyConstraint(['created_by'], ['users.id'], name=op.f('fk_rollouts_created_by_users'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_rollouts')),
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollouts_release_id'), ['release_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rollouts_state'), ['state'], unique=False)
    op.create_table(
        'rollout_targets',
        sa.Column('rollout_id', sa.Integer(), nullable=False),
        sa.Column('receiver_id', sa.String(length=64), nullable=False),
        sa.Column('wave', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('percent', sa.Integer(), nullable=True),
        sa.Column('reason', sa.String(length=200), nullable=True),
        sa.Column('from_version', sa.String(length=64), nullable=True),
        sa.Column('offered_at', UTCDateTime(), nullable=True),
        sa.Column('state_at', UTCDateTime(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('command_id', sa.String(length=32), nullable=True),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], name=op.f('fk_rollout_targets_rollout_id_rollouts'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['receiver_id'], ['receivers.id'],
                                name=op.f('fk_rollout_targets_receiver_id_receivers'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('rollout_id', 'receiver_id', name=op.f('pk_rollout_targets')),
    )
    with op.batch_alter_table('rollout_targets', schema=None) as batch_op:
        batch_op.create_index('ix_rollout_targets_rollout_wave', ['rollout_id', 'wave'], unique=False)
        batch_op.create_index('ix_rollout_targets_receiver', ['receiver_id', 'state'], unique=False)


    with op.batch_alter_table('receiver_live_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hardware', sa.String(length=40), nullable=True))
    op.create_table(
        'firmware_downloads',
        sa.Column('receiver_id', sa.String(length=64), nullable=False),
        sa.Column('release_id', sa.Integer(), nullable=False),
        sa.Column('bytes_served', sa.BigInteger(), nullable=False),
        sa.Column('requests', sa.Integer(), nullable=False),
        sa.Column('first_at', UTCDateTime(), nullable=False),
        sa.Column('last_at', UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['receiver_id'], ['receivers.id'],
                                name=op.f('fk_firmware_downloads_receiver_id_receivers'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['release_id'], ['firmware_releases.id'],
                                name=op.f('fk_firmware_downloads_release_id_firmware_releases'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('receiver_id', 'release_id', name=op.f('pk_firmware_downloads')),
    )


def downgrade() -> None:
    op.drop_table('firmware_downloads')
    with op.batch_alter_table('receiver_live_state', schema=None) as batch_op:
        batch_op.drop_column('hardware')
    with op.batch_alter_table('rollout_targets', schema=None) as batch_op:
        batch_op.drop_index('ix_rollout_targets_receiver')
        batch_op.drop_index('ix_rollout_targets_rollout_wave')
    op.drop_table('rollout_targets')
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollouts_state'))
        batch_op.drop_index(batch_op.f('ix_rollouts_release_id'))
    op.drop_table('rollouts')
