"""Checks the domain-contract tests (``tests/integration/test_contract_*.py``) share."""

from __future__ import annotations

import uuid
from datetime import datetime

from simtrack.errors import InvalidArgument
from tests.support import Services


def missing_id() -> str:
    return str(uuid.uuid4())


def assert_aware(*stamps: datetime | None) -> None:
    for stamp in stamps:
        assert stamp is not None
        assert stamp.utcoffset() is not None, f"{stamp!r} is naive"


def assert_touched(
    before: tuple[datetime, datetime], after_created: datetime, after_updated: datetime
) -> None:
    """created_at kept, updated_at moved forward."""
    created, updated = before
    assert after_created == created
    assert after_updated > updated


async def count(services: Services, table: str, **where: str) -> int:
    clause = " AND ".join(f"{column} = :{column}" for column in where)
    sql = f"SELECT count(*) FROM {table}" + (f" WHERE {clause}" if clause else "")
    return int(await services.scalar(sql, **where))


def violation_fields(error: InvalidArgument) -> list[str]:
    return [v.field for v in error.violations]
