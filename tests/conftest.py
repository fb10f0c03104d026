import os

import pytest
import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests run many tiny models; more threads than cores only adds contention.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(autouse=True, scope="session")
def _a_models_folder_of_the_tests(tmp_path_factory):
    """Settings lists the user's models folder (``studio.catalog.models_folder``): the tests see
    an empty one of their own, never the real user's imported models. A test that needs models
    there names its own folder with ``monkeypatch.setenv("DALLE_STUDIO_MODELS", ...)``."""
    before = os.environ.get("DALLE_STUDIO_MODELS")
    os.environ["DALLE_STUDIO_MODELS"] = str(tmp_path_factory.mktemp("models"))
    yield
    if before is None:
        os.environ.pop("DALLE_STUDIO_MODELS", None)
    else:
        os.environ["DALLE_STUDIO_MODELS"] = before
