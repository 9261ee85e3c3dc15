"""schedules reference their target by id only

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The copied path went stale when a region moved; the target's path is looked up from its id.
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_schedules_target_path'))
        batch_op.drop_column('target_path')


def downgrade() -> None:
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target_path', sa.String(length=1000), nullable=True))
    op.execute(
        "UPDATE schedules SET target_path = CASE WHEN target_kind = 'station' THEN "
        "(SELECT regions.path FROM stations JOIN regions ON regions.id = stations.region_id "
        "WHERE stations.id = schedules.target_id) "
        "ELSE (SELECT regions.path FROM regions WHERE regions.id = schedules.target_id) END")
    op.execute("UPDATE schedules SET target_path = '/' WHERE target_path IS NULL")
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.alter_column('target_path', existing_type=sa.String(length=1000), nullable=False)
        batch_op.create_index(batch_op.f('ix_schedules_target_path'), ['target_path'], unique=False)
