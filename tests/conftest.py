"""Shared test configuration: AiiDA's fixtures are available to the tests under ``tests/aiida``."""

pytest_plugins = ['aiida.tools.pytest_fixtures']
