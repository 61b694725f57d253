"""simtrack's Python client library and command line."""
