import pytest

from demo import write_demo_gallery


@pytest.fixture
def demo_gallery(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    manifest = write_demo_gallery(str(folder))
    return folder, manifest
