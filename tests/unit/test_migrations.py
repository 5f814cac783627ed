"""The schema comes only from the migrations, and they agree with the models."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from loraq.migrate import alembic_config, downgrade, upgrade
from models import Base


def test_upgrade_check_downgrade_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    command.check(alembic_config(url))  # raises if the models and the migrations disagree
    assert set(inspect(create_engine(url)).get_table_names()) >= set(Base.metadata.tables)
    downgrade(url, "base")
    assert set(inspect(create_engine(url)).get_table_names()) == {"alembic_version"}
    upgrade(url)
