"""Alembic environment: edgecsp passes its open connection (History), the command line a URL (-x url=...)."""

from alembic import context
from sqlalchemy import create_engine

VERSION_TABLE = "edgecsp_schema_version"  # not "alembic_version": a shared database may hold another app's

connection = context.config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():  # inside History's transaction: a no-op begin
        context.run_migrations()
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database: alembic ... -x url=postgresql+psycopg://user@host/edgecsp upgrade head")
    with create_engine(url).begin() as conn:
        context.configure(connection=conn, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
