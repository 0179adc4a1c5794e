"""Fixtures of the ``streamer process`` tests: real media files and the model file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.streamer.media_files import write_media_files


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of real media files, written once per session (see ``write_media_files``)."""
    return write_media_files(tmp_path_factory.mktemp("media"))


@pytest.fixture
def model_path(request: pytest.FixtureRequest) -> Path:
    """The lead's ``tiny_model_path`` (tests/conftest.py); skips the test while it does not exist."""
    try:
        return Path(request.getfixturevalue("tiny_model_path"))
    except pytest.FixtureLookupError:
        pytest.skip("needs the tiny_model_path fixture (tests/conftest.py) and engines.loading")
