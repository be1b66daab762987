"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 20:21:48.232218
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
import core.db.types
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    
    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', core.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash')),
    sa.UniqueConstraint('name', name=op.f('uq_api_keys_name'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_prefix'), ['prefix'], unique=False)

    op.create_table('items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('title', sa.String(length=1000), nullable=False),
    sa.Column('category', sa.String(length=255), nullable=True),
    sa.Column('attributes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('group_key', sa.String(length=255), nullable=True),
    sa.Column('status', sa.Enum('active', 'deleted', name='itemstatus', native_enum=False, length=16), nullable=False),
    sa.Column('created_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_items'))
    )
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_items_category'), ['category'], unique=False)
        batch_op.create_index(batch_op.f('ix_items_external_id'), ['external_id'], unique=True)
        batch_op.create_index(batch_op.f('ix_items_group_key'), ['group_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_items_status'), ['status'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('import', 'embed', 'reindex', 'train', 'retrain', name='jobkind', native_enum=False, length=16), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='jobstatus', native_enum=False, length=16), nullable=False),
    sa.Column('progress_done', sa.BigInteger(), nullable=False),
    sa.Column('progress_total', sa.BigInteger(), nullable=False),
    sa.Column('celery_task_id', sa.String(length=255), nullable=True),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', core.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', core.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_jobs_kind_status', ['kind', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_status'), ['status'], unique=False)

    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('spec', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('checkpoint_path', sa.String(length=2000), nullable=False),
    sa.Column('train_config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.Enum('candidate', 'active', 'retired', name='modelstatus', native_enum=False, length=16), nullable=False),
    sa.Column('notes', sa.Text(), nullable=False),
    sa.Column('created_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('activated_at', core.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('version', name=op.f('uq_models_version'))
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_models_status'), ['status'], unique=False)

    op.create_table('indexes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=2000), nullable=False),
    sa.Column('item_count', sa.Integer(), nullable=False),
    sa.Column('image_count', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('building', 'ready', 'active', 'failed', 'retired', name='indexstatus', native_enum=False, length=16), nullable=False),
    sa.Column('n_trees', sa.Integer(), nullable=False),
    sa.Column('build_seconds', sa.Float(), nullable=True),
    sa.Column('self_recall', sa.Float(), nullable=True),
    sa.Column('max_embedding_created_at', core.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('created_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('published_at', core.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_indexes_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_indexes')),
    sa.UniqueConstraint('version', name=op.f('uq_indexes_version'))
    )
    with op.batch_alter_table('indexes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_indexes_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_indexes_status'), ['status'], unique=False)

    op.create_table('item_images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('source_uri', sa.String(length=2000), nullable=False),
    sa.Column('media_key', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('active', 'removed', name='imagestatus', native_enum=False, length=16), nullable=False),
    sa.Column('created_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['items.id'], name=op.f('fk_item_images_item_id_items'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_item_images')),
    sa.UniqueConstraint('item_id', 'media_key', name=op.f('uq_item_images_item_id_media_key'))
    )
    with op.batch_alter_table('item_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_item_images_item_id'), ['item_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_item_images_media_key'), ['media_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_item_images_status'), ['status'], unique=False)

    op.create_table('embeddings',
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', core.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['item_images.id'], name=op.f('fk_embeddings_image_id_item_images'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_embeddings_model_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', 'model_id', name=op.f('pk_embeddings'))
    )
    with op.batch_alter_table('embeddings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_embeddings_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_embeddings_model_id'), ['model_id'], unique=False)

    


def downgrade() -> None:
    
    with op.batch_alter_table('embeddings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_embeddings_model_id'))
        batch_op.drop_index(batch_op.f('ix_embeddings_created_at'))

    op.drop_table('embeddings')
    with op.batch_alter_table('item_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_item_images_status'))
        batch_op.drop_index(batch_op.f('ix_item_images_media_key'))
        batch_op.drop_index(batch_op.f('ix_item_images_item_id'))

    op.drop_table('item_images')
    with op.batch_alter_table('indexes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_indexes_status'))
        batch_op.drop_index(batch_op.f('ix_indexes_model_id'))

    op.drop_table('indexes')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_models_status'))

    op.drop_table('models')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_status'))
        batch_op.drop_index('ix_jobs_kind_status')
        batch_op.drop_index(batch_op.f('ix_jobs_created_at'))

    op.drop_table('jobs')
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_items_status'))
        batch_op.drop_index(batch_op.f('ix_items_group_key'))
        batch_op.drop_index(batch_op.f('ix_items_external_id'))
        batch_op.drop_index(batch_op.f('ix_items_category'))

    op.drop_table('items')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_prefix'))

    op.drop_table('api_keys')
    
