import os

import pytest

from gunctl.core.paths import confine, safe_name
from gunctl.errors import DataError, UsageError


@pytest.mark.parametrize("name", ["run-1", "20261126-101500", "gun ü 1", "a.b", "[x]", ":fire:"])
def test_plain_names_pass(name):
    assert safe_name(name, "run name") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        ".",
        "..",
        "../x",
        "a/b",
        "a\\b",
        "/abs",
        ".hidden",
        "a\x00b",
        "a\nb",
        "a\x1bb",
        "a\u202eb",
        "a\u2028b",
        "\udcff",
        "x" * 201,
        "é" * 130,
        3,
        None,
    ],
)
def test_names_that_are_not_one_plain_component_are_refused(name):
    with pytest.raises(UsageError, match="run name .*refused"):
        safe_name(name, "run name", UsageError)


def test_confine_follows_symlinks(tmp_path):
    root = tmp_path / "raw"
    (root / "Images").mkdir(parents=True)
    (root / "Images" / "a.jpeg").write_bytes(b"x")
    (root / "Images" / "inside.jpeg").symlink_to(root / "Images" / "a.jpeg")
    (root / "Images" / "outside.jpeg").symlink_to("/etc/hostname")
    (root / "Images" / "loop.jpeg").symlink_to(root / "Images" / "loop.jpeg")
    linked_root = tmp_path / "linked"
    linked_root.symlink_to(root)  # a root that is itself a link is fine
    assert confine(linked_root / "Images", "a.jpeg", "image").name == "a.jpeg"
    assert confine(root / "Images", "inside.jpeg", "image").name == "inside.jpeg"
    for bad in ("outside.jpeg", "../../x", "/etc/passwd", "loop.jpeg"):
        with pytest.raises(DataError, match="image"):
            confine(root / "Images", bad, "image")
    assert os.path.exists(root / "Images" / "a.jpeg")
