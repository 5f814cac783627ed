"""The schema comes only from the migrations; they agree with the models and every one goes down and up
again, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from loraq.migrate import alembic_config, downgrade, upgrade
from models import Base
from tests.servers import PostgresServer


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'm.db'}"
        return
    server = PostgresServer().start()
    yield server.url
    server.stop()


def _tables(url):
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_models_and_migrations_agree(database_url):
    upgrade(database_url)
    command.check(alembic_config(database_url))  # raises if autogenerate would find a difference
    assert _tables(database_url) >= set(Base.metadata.tables)


def test_every_migration_downgrades_and_upgrades_again(database_url):
    upgrade(database_url)
    revisions = list(ScriptDirectory.from_config(alembic_config(database_url)).walk_revisions())
    assert len(revisions) >= 2
    for _ in revisions:  # newest first: step down one at a time, and back up each step
        downgrade(database_url, "-1")
        upgrade(database_url, "+1")
        downgrade(database_url, "-1")
    assert _tables(database_url) == {"alembic_version"}
    upgrade(database_url)
    command.check(alembic_config(database_url))
