"""What an operator runs: ``simtrack migrate`` on a new and on an outdated PostgreSQL database,
with the settings in a YAML file, as the server reads them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from simtrack.server.config import CONFIG_FILE_VARIABLE, Settings
from simtrack.server.db import migrate
from tests.support import APP_ROLE, run_simtrack

POSTGRES_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]
)
BEFORE_TELEMETRY = "5415fdf8876f"  # tenants, no metrics, events or later tables yet
DEFAULT_TENANT = "00000000-0000-0000-0000-000000000000"


def write_config(path: Path, database_url: str, **more: object) -> Path:
    lines = [f"database_url: {database_url}", *(f"{k}: {v}" for k, v in more.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def revision_of(url: str) -> str:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row is not None
    return str(row[0])


@POSTGRES_ONLY
def test_migrate_an_empty_database_from_a_yaml_config_and_grant_the_app_role(
    empty_database_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "simtrack.yaml", empty_database_url)
    result = run_simtrack("migrate", "--config", str(config), "--app-role", APP_ROLE)
    assert "migrated to head" in result.stdout
    assert f"role {APP_ROLE!r} may now serve this database" in result.stdout
    assert revision_of(empty_database_url) == migrate.head_revision()
    with psycopg.connect(empty_database_url) as connection:
        granted = connection.execute(
            "SELECT has_table_privilege(%s, 'runs', 'INSERT'), "
            "has_table_privilege(%s, 'api_keys', 'INSERT')",
            (APP_ROLE, APP_ROLE),
        ).fetchone()
    assert granted == (True, False), "the app role writes runs but cannot mint keys"

    again = run_simtrack("migrate", "--config", str(config))  # idempotent
    assert again.returncode == 0 and revision_of(empty_database_url) == migrate.head_revision()


@POSTGRES_ONLY
def test_migrate_brings_a_database_behind_head_up_keeping_its_rows(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    migrate.upgrade(url, BEFORE_TELEMETRY)
    agent = str(uuid.uuid4())
    with psycopg.connect(url) as connection:
        connection.execute(
            "INSERT INTO agents (tenant_id, id, name, framework, config, created_at, updated_at) "
            "VALUES (%s, %s, 'old', 'custom', '{}', now(), now())",
            (DEFAULT_TENANT, agent),
        )
    # The URL from the environment this time, as SIMTRACK_DATABASE_URL.
    run_simtrack("migrate", SIMTRACK_DATABASE_URL=url)
    assert revision_of(url) == migrate.head_revision()
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT id, name FROM agents").fetchall()
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    assert rows == [(agent, "old")]
    assert {"metrics", "events", "validations", "artifacts"} <= tables


def test_a_bad_config_file_is_refused_naming_the_problem(tmp_path: Path) -> None:
    missing = run_simtrack("migrate", "--config", str(tmp_path / "absent.yaml"), check=False)
    assert missing.returncode != 0 and "absent.yaml: no such file" in missing.stderr
    typo = write_config(tmp_path / "typo.yaml", "sqlite:///x.db", heartbeat_timout=5)
    refused = run_simtrack("migrate", "--config", str(typo), check=False)
    assert refused.returncode != 0 and "heartbeat_timout" in refused.stderr
    assert not (tmp_path / "x.db").exists()


# The YAML file as the settings read it (in process: no server needed to read settings).


def test_settings_come_from_the_yaml_file_under_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("SIMTRACK_")]:
        monkeypatch.delenv(name)
    config = write_config(
        tmp_path / "simtrack.yaml",
        "postgresql://db.internal/simtrack",
        listen="0.0.0.0:6000",
        auth_enabled="true",
        heartbeat_timeout=12.5,
        artifacts_dir=str(tmp_path / "store"),
    )
    monkeypatch.setenv(CONFIG_FILE_VARIABLE, str(config))
    settings = Settings()
    assert settings.database_url == "postgresql://db.internal/simtrack"
    assert (settings.listen, settings.auth_enabled) == ("0.0.0.0:6000", True)
    assert settings.heartbeat_timeout == 12.5
    assert settings.artifacts_dir == tmp_path / "store"
    assert settings.cancel_grace == 30.0, "what the file leaves out keeps its default"

    monkeypatch.setenv("SIMTRACK_LISTEN", "127.0.0.1:7000")  # the environment wins
    assert Settings().listen == "127.0.0.1:7000"
    assert Settings(listen="127.0.0.1:8000").listen == "127.0.0.1:8000"  # then the CLI's flags

    write_config(config, "mysql://nope")
    with pytest.raises(ValidationError, match="only sqlite:// and postgresql://"):
        Settings()
    config.write_text("database_url: sqlite:///a.db\nheartbeat_timeout: -1\n")
    with pytest.raises(ValidationError, match="heartbeat_timeout"):
        Settings()
