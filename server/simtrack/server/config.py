"""Server settings: SIMTRACK_* environment variables, then an optional YAML file, then defaults.

The YAML file is named by SIMTRACK_CONFIG (or ``simtrack serve --config``); its keys are the
field names below without the prefix, e.g. ``database_url: postgresql://...``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_FILE_VARIABLE = "SIMTRACK_CONFIG"


class Settings(BaseSettings):
    """Everything the server needs to start."""

    model_config = SettingsConfigDict(env_prefix="SIMTRACK_", extra="forbid")

    database_url: str = Field(
        default="sqlite:///simtrack.db",
        description="SQLAlchemy URL; plain postgresql:// and sqlite:// are given async drivers.",
    )
    listen: str = Field(default="127.0.0.1:50051", description="host:port to serve on.")
    reuse_port: bool = Field(
        default=False,
        description="Share the listen port with other processes (SO_REUSEPORT); off: a port "
        "already in use is refused at start-up.",
    )
    scenarios_dir: Path | None = Field(
        default=None, description="Folder of scenario YAML files; default: the built-in ones."
    )
    health_check_interval: float = Field(
        default=5.0, gt=0, description="Seconds between database health probes."
    )
    shutdown_grace: float = Field(
        default=10.0, ge=0, description="Seconds in-flight calls get to finish on shutdown."
    )
    heartbeat_interval: float = Field(
        default=5.0, gt=0, description="Seconds between a streaming worker's heartbeats."
    )
    heartbeat_timeout: float = Field(
        default=30.0, gt=0, description="A running run silent this long is failed."
    )
    cancel_grace: float = Field(
        default=30.0, gt=0, description="A cancelled run not confirmed this long is stopped."
    )
    artifacts_dir: Path = Field(
        default=Path("simtrack-artifacts"),
        description="Folder of artifact files (shared by every server process of a database).",
    )
    artifact_max_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Largest artifact accepted, in bytes."
    )
    auth_enabled: bool = Field(
        default=False, description="Require an API key on every call (multi-tenant mode)."
    )
    allow_unauthenticated_remote: bool = Field(
        default=False,
        description="Serve a non-loopback address with auth disabled (a trusted network only).",
    )
    auth_cache_seconds: float = Field(
        default=2.0, ge=0, description="How long a verified key is trusted before re-checking."
    )
    compaction_interval: float = Field(
        default=2.0,
        ge=0,
        description="Seconds between compaction rounds (small metric chunks rewritten into "
        "large compressed ones); 0: no compaction in this process.",
    )
    compaction_settle: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a small chunk waits before compaction takes it (so one rewrite "
        "takes many); the lag is this, up to one interval, and the round's time.",
    )
    compaction_idle: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a metric's small chunks wait, while they hold fewer than 1,000 "
        "points together and it is still written to, before compaction takes them anyway "
        "(a series that ended or paused); 0: no waiting.",
    )
    compaction_target_points: int = Field(
        default=16_384,
        ge=1000,
        description="Points per compacted chunk (the last of a series may hold fewer).",
    )
    compaction_batch_metrics: int = Field(
        default=128,
        ge=1,
        description="Metrics compacted per transaction at most (one tenant's; fewer when "
        "their small chunks hold many points).",
    )
    http_listen: str = Field(
        default="127.0.0.1:8080",
        description="host:port serving the API over HTTP (Connect, gRPC-Web, gRPC) and the "
        "dashboard (port 0: a free one); empty: off.",
    )
    metrics_listen: str = Field(
        default="",
        description="host:port serving Prometheus /metrics (port 0: a free one); empty: off.",
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return url

    @field_validator("metrics_listen", "http_listen")
    @classmethod
    def _host_and_port(cls, listen: str) -> str:
        host, colon, port = listen.rpartition(":")
        if listen and not (colon and host and port.isdigit() and int(port) < 65536):
            raise ValueError("expected host:port, e.g. 127.0.0.1:9464 (or empty: off)")
        return listen

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_VARIABLE)
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_VARIABLE}={config_file}: no such file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)
