"""Server settings, read from SIMTRACK_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server needs to start. Environment variables win over defaults."""

    model_config = SettingsConfigDict(env_prefix="SIMTRACK_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///simtrack.db",
        description="SQLAlchemy URL; plain postgresql:// and sqlite:// are given async drivers.",
    )
    listen: str = Field(default="127.0.0.1:50051", description="host:port to serve on.")
    scenarios_dir: Path | None = Field(
        default=None, description="Folder of scenario YAML files; default: the built-in ones."
    )
    health_check_interval: float = Field(
        default=5.0, gt=0, description="Seconds between database health probes."
    )
    shutdown_grace: float = Field(
        default=10.0, ge=0, description="Seconds in-flight calls get to finish on shutdown."
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return url
