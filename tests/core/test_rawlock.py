import pytest

from gunctl.config import Layout
from gunctl.core.rawlock import RawLock, swap_into_place
from gunctl.errors import RunLockedError


def _tree(path, text):
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(text)
    return path


def test_swap_replaces_and_leaves_nothing_aside(tmp_path):
    layout = Layout(tmp_path)
    _tree(layout.raw, "old")
    with RawLock(layout, exclusive=True):
        swap_into_place(_tree(tmp_path / ".raw-staging-1-x", "new"), layout.raw)
    assert layout.manifest.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".raw.lock", "raw"]


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_killed_swap_is_recovered_by_the_next_lock(tmp_path, exclusive):
    layout = Layout(tmp_path)
    _tree(tmp_path / ".raw-old", "old")  # killed between the two renames
    with RawLock(layout, exclusive=exclusive):
        assert layout.manifest.read_text() == "old"
    layout.manifest.write_text("new")
    _tree(tmp_path / ".raw-old", "old")  # killed after the second rename
    with RawLock(layout, exclusive=True):
        assert layout.manifest.read_text() == "new"
        assert not (tmp_path / ".raw-old").exists()


def test_shared_and_exclusive_exclude_each_other(tmp_path):
    layout = Layout(tmp_path)
    with (
        RawLock(layout, exclusive=False),
        RawLock(layout, exclusive=False),
        pytest.raises(RunLockedError, match="in use"),
    ):
        RawLock(layout, exclusive=True).__enter__()
    with (
        RawLock(layout, exclusive=True, command="gunctl ingest"),
        pytest.raises(RunLockedError, match="being replaced by gunctl ingest"),
    ):
        RawLock(layout, exclusive=False).__enter__()
