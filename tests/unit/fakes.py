"""Fakes for the domain's ports (``simtrack.server.domain.ports``), built up per test.

A fake implements what its test exercises and inherits the rest from ``Unfaked``, which fails
loudly when the code under test reaches for something the test did not fake. mypy still checks
every member a fake does define against the port's signature, so a fake is handed to a
service as it is, with no cast.
"""

from __future__ import annotations

from typing import Any


class Unfaked:
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle, inspect probing for optional protocols
            raise AttributeError(name)
        raise AssertionError(f"{type(self).__name__}.{name} is not faked: fake it in the test")
