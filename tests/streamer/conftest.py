"""Fixtures of the ``streamer process`` tests: a directory of real media files.

The model file these tests run is ``tiny_model_path`` (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.streamer.media_files import write_media_files


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of real media files, written once per test run (see ``write_media_files``)."""
    return write_media_files(tmp_path_factory.mktemp("media"))
