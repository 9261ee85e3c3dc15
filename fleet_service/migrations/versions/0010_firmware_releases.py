"""Firmware releases: the signed manifest and signature as uploaded, and each file's content

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10 00:00:00
"""
from alembic import op
import sqlalchemy as sa

from fleet_service.db import UTCDateTime


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'firmware_releases',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version', sa.String(length=16), nullable=False),
        sa.Column('version_order', sa.BigInteger(), nullable=False),
        sa.Column('hardware', sa.String(length=40), nullable=False),
        sa.Column('min_version', sa.String(length=16), nullable=False),
        sa.Column('mpy_version', sa.String(length=16), nullable=False),
        sa.Column('file_count', sa.Integer(), nullable=False),
        sa.Column('total_length', sa.Integer(), nullable=False),
        sa.Column('manifest', sa.LargeBinary(), nullable=False),
        sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
        sa.Column('signature', sa.LargeBinary(), nullable=False),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.Column('uploaded_by', sa.Integer(), nullable=True),
        sa.Column('uploader_name', sa.String(length=100), nullable=False),
        sa.Column('uploaded_at', UTCDateTime(), nullable=False),
        sa.Column('withdrawn_at', UTCDateTime(), nullable=True),
        sa.Column('withdrawn_by', sa.Integer(), nullable=True),
        sa.Column('withdrawer_name', sa.String(length=100), nullable=True),
        sa.Column('withdraw_reason', sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(['uploaded_by'], ['users.id'], name=op.f('fk_firmware_releases_uploaded_by_users'),
                                ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['withdrawn_by'], ['users.id'], name=op.f('fk_firmware_releases_withdrawn_by_users'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_firmware_releases')),
        sa.UniqueConstraint('hardware', 'version', name=op.f('uq_firmware_releases_hardware')),
    )
    with op.batch_alter_table('firmware_releases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_firmware_releases_hardware'), ['hardware'], unique=False)
    op.create_table(
        'firmware_release_files',
        sa.Column('release_id', sa.Integer(), nullable=False),
        sa.Column('path', sa.String(length=200), nullable=False),
        sa.Column('length', sa.Integer(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['release_id'], ['firmware_releases.id'],
                                name=op.f('fk_firmware_release_files_release_id_firmware_releases'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('release_id', 'path', name=op.f('pk_firmware_release_files')),
    )


def downgrade() -> None:
    op.drop_table('firmware_release_files')
    with op.batch_alter_table('firmware_releases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_firmware_releases_hardware'))
    op.drop_table('firmware_releases')
