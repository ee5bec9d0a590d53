import pytest

from tests.latent.helpers import one_thread


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()
