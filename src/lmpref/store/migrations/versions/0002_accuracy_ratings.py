"""Accuracy-rating tasks: `tasks.kind` ("compare" | "accuracy") and `labels.rating`.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing tasks are all comparisons; the server default fills them in.
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='compare', nullable=False))
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rating', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_column('rating')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('kind')
