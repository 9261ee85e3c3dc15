"""Alerts: rule overrides per region, the conditions being timed, incidents, silences, crews
with their members and rotation, and the notifications sent to them

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 00:00:00
"""
from alembic import op
import sqlalchemy as sa

from fleet_service.db import UTCDateTime


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alert_rule_overrides',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('region_id', sa.Integer(), nullable=True),
    sa.Column('region_key', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=True),
    sa.Column('pending_s', sa.Integer(), nullable=True),
    sa.Column('hold_s', sa.Integer(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=True),
    sa.Column('group_wait_s', sa.Integer(), nullable=True),
    sa.Column('updated_by', sa.String(length=100), nullable=False),
    sa.Column('updated_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['region_id'], ['regions.id'], name=op.f('fk_alert_rule_overrides_region_id_regions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_rule_overrides')),
    sa.UniqueConstraint('region_key', 'kind', name=op.f('uq_alert_rule_overrides_region_key'))
    )
    with op.batch_alter_table('alert_rule_overrides', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_rule_overrides_region_id'), ['region_id'], unique=False)

    op.create_table('crews',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('region_id', sa.Integer(), nullable=True),
    sa.Column('rotation_start', UTCDateTime(), nullable=False),
    sa.Column('rotation_days', sa.Integer(), nullable=False),
    sa.Column('escalation', sa.JSON(), nullable=False),
    sa.Column('reminder_min', sa.Integer(), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['region_id'], ['regions.id'], name=op.f('fk_crews_region_id_regions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_crews'))
    )
    with op.batch_alter_table('crews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_crews_region_id'), ['region_id'], unique=False)

    op.create_table('crew_members',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('crew_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('engineer', sa.Boolean(), nullable=False),
    sa.Column('channels', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['crew_id'], ['crews.id'], name=op.f('fk_crew_members_crew_id_crews'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_crew_members'))
    )
    with op.batch_alter_table('crew_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_crew_members_crew_id'), ['crew_id'], unique=False)

    op.create_table('alert_silences',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('receiver_id', sa.String(length=64), nullable=True),
    sa.Column('station_id', sa.Integer(), nullable=True),
    sa.Column('region_id', sa.Integer(), nullable=True),
    sa.Column('kinds', sa.JSON(), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('starts_at', UTCDateTime(), nullable=False),
    sa.Column('ends_at', UTCDateTime(), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['receiver_id'], ['receivers.id'], name=op.f('fk_alert_silences_receiver_id_receivers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['region_id'], ['regions.id'], name=op.f('fk_alert_silences_region_id_regions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['station_id'], ['stations.id'], name=op.f('fk_alert_silences_station_id_stations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_silences'))
    )
    with op.batch_alter_table('alert_silences', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_silences_ends_at'), ['ends_at'], unique=False)

    op.create_table('incidents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('receiver_id', sa.String(length=64), nullable=True),
    sa.Column('station_id', sa.Integer(), nullable=True),
    sa.Column('region_id', sa.Integer(), nullable=True),
    sa.Column('region_path', sa.String(length=1000), nullable=False),
    sa.Column('open_key', sa.String(length=200), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('suppressed_by', sa.String(length=64), nullable=True),
    sa.Column('summary', sa.String(length=500), nullable=False),
    sa.Column('value', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.Column('started_at', UTCDateTime(), nullable=False),
    sa.Column('opened_at', UTCDateTime(), nullable=False),
    sa.Column('acknowledged_at', UTCDateTime(), nullable=True),
    sa.Column('acknowledged_by', sa.String(length=100), nullable=True),
    sa.Column('resolved_at', UTCDateTime(), nullable=True),
    sa.Column('resolved_by', sa.String(length=100), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['parent_id'], ['incidents.id'], name=op.f('fk_incidents_parent_id_incidents'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['receiver_id'], ['receivers.id'], name=op.f('fk_incidents_receiver_id_receivers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['region_id'], ['regions.id'], name=op.f('fk_incidents_region_id_regions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['station_id'], ['stations.id'], name=op.f('fk_incidents_station_id_stations'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_incidents')),
    sa.UniqueConstraint('open_key', name=op.f('uq_incidents_open_key'))
    )
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_incidents_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_parent_id'), ['parent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_receiver_id'), ['receiver_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_region_id'), ['region_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_region_path'), ['region_path'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_state'), ['state'], unique=False)
        batch_op.create_index('ix_incidents_state_opened', ['state', 'opened_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_incidents_station_id'), ['station_id'], unique=False)

    op.create_table('alert_conditions',
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('receiver_id', sa.String(length=64), nullable=False),
    sa.Column('active_since', UTCDateTime(), nullable=False),
    sa.Column('seen_at', UTCDateTime(), nullable=False),
    sa.Column('cleared_at', UTCDateTime(), nullable=True),
    sa.Column('value', sa.String(length=64), nullable=True),
    sa.Column('incident_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_alert_conditions_incident_id_incidents'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['receiver_id'], ['receivers.id'], name=op.f('fk_alert_conditions_receiver_id_receivers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('kind', 'receiver_id', name=op.f('pk_alert_conditions'))
    )
    with op.batch_alter_table('alert_conditions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_conditions_incident_id'), ['incident_id'], unique=False)

    op.create_table('notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('incident_id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('dedupe_key', sa.String(length=200), nullable=False),
    sa.Column('member_id', sa.Integer(), nullable=True),
    sa.Column('recipient', sa.String(length=200), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('available_at', UTCDateTime(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', UTCDateTime(), nullable=False),
    sa.Column('sent_at', UTCDateTime(), nullable=True),
    sa.Column('ack_token_hash', sa.String(length=64), nullable=True),
    sa.Column('ack_expires_at', UTCDateTime(), nullable=True),
    sa.Column('ack_used_at', UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['incident_id'], ['incidents.id'], name=op.f('fk_notifications_incident_id_incidents'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['member_id'], ['crew_members.id'], name=op.f('fk_notifications_member_id_crew_members'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    sa.UniqueConstraint('ack_token_hash', name=op.f('uq_notifications_ack_token_hash')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_notifications_dedupe_key'))
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notifications_incident_id'), ['incident_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notifications_member_id'), ['member_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notifications_state'), ['state'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notifications_state'))
        batch_op.drop_index(batch_op.f('ix_notifications_member_id'))
        batch_op.drop_index(batch_op.f('ix_notifications_incident_id'))

    op.drop_table('notifications')
    with op.batch_alter_table('alert_conditions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alert_conditions_incident_id'))

    op.drop_table('alert_conditions')
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_incidents_station_id'))
        batch_op.drop_index('ix_incidents_state_opened')
        batch_op.drop_index(batch_op.f('ix_incidents_state'))
        batch_op.drop_index(batch_op.f('ix_incidents_region_path'))
        batch_op.drop_index(batch_op.f('ix_incidents_region_id'))
        batch_op.drop_index(batch_op.f('ix_incidents_receiver_id'))
        batch_op.drop_index(batch_op.f('ix_incidents_parent_id'))
        batch_op.drop_index(batch_op.f('ix_incidents_kind'))

    op.drop_table('incidents')
    with op.batch_alter_table('alert_silences', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alert_silences_ends_at'))

    op.drop_table('alert_silences')
    with op.batch_alter_table('crew_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_crew_members_crew_id'))

    op.drop_table('crew_members')
    with op.batch_alter_table('crews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_crews_region_id'))

    op.drop_table('crews')
    with op.batch_alter_table('alert_rule_overrides', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alert_rule_overrides_region_id'))

    op.drop_table('alert_rule_overrides')
