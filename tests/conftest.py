"""Shared test configuration: AiiDA's fixtures are available to the tests under ``tests/aiida``."""

import pytest
import torch

pytest_plugins = ['aiida.tools.pytest_fixtures']


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: small tensors gain nothing from intra-op threads, and the machine is shared.

    A test module takes it with ``pytestmark = pytest.mark.usefixtures('one_thread')``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
