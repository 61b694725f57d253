"""A command for a run's worker, as the domain issues it and the bus and streams carry it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CommandMessage:
    """A command for a run's worker."""

    run_id: str
    id: str
    name: str
    args: dict[str, Any]
