"""Suite-wide set-up: every test runs tiny models on one torch thread (see helpers_runs)."""

import pytest

from helpers_runs import one_torch_thread


@pytest.fixture(autouse=True)
def single_torch_thread():
    with one_torch_thread():
        yield
