"""The vocabulary every layer of the server speaks: states and their rules (``model``), who is
calling (``tenancy``), list requests and page tokens (``listing``), commands for a worker.

Pure Python over ``simtrack.errors``: no database, no network, no gRPC. It sits below ``db``,
whose rows and queries are written in it, so it may import nothing else of the server
(``lint-imports`` checks this; see ``[tool.importlinter]`` in pyproject.toml).
"""
