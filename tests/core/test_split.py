import pytest

from gunctl.config import SplitConfig
from gunctl.core.split import create_split, make_split, split_bytes
from gunctl.errors import UsageError


def entries(n):
    return [
        {
            "stem": str(i),
            "image": f"{i}.jpeg",
            "label": f"{i}.txt",
            "boxes": i % 3,
            "width": 10,
            "height": 10,
        }
        for i in range(1, n + 1)
    ]


def test_same_inputs_same_bytes():
    a = split_bytes(make_split(entries(50), 7, 0.2, None, "abc"))
    b = split_bytes(make_split(list(reversed(entries(50))), 7, 0.2, None, "abc"))
    assert a == b
    assert a != split_bytes(make_split(entries(50), 8, 0.2, None, "abc"))


def test_fraction_subset_and_disjoint_parts():
    split = make_split(entries(50), 0, 0.2, None, "x")
    train = {i["image"] for i in split["train"]}
    val = {i["image"] for i in split["val"]}
    assert len(val) == 10 and len(train) == 40 and not train & val
    small = make_split(entries(50), 0, 0.2, 5, "x")
    assert (len(small["train"]), len(small["val"])) == (4, 1)
    assert small["subset"] == 5 and small["manifest_checksum"] == "x"


def test_parts_are_in_numeric_order():
    split = make_split(entries(30), 0, 0.5, None, "x")
    stems = [int(i["image"].split(".")[0]) for i in split["train"]]
    assert stems == sorted(stems)


def test_subset_samples_rather_than_takes_the_first():
    split = make_split(entries(100), 0, 0.2, 10, "x")
    stems = {int(i["image"].split(".")[0]) for part in ("train", "val") for i in split[part]}
    assert stems != set(range(1, 11))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_fraction(fraction):
    with pytest.raises(UsageError, match="--val-fraction"):
        make_split(entries(10), 0, fraction, None, "x")


def test_create_split_records_the_manifest_checksum(demo_layout):
    result = create_split(SplitConfig(layout=demo_layout, subset=6))
    import json

    manifest = json.loads(demo_layout.manifest.read_text())
    assert result.split["manifest_checksum"] == manifest["checksum"]
    assert result.path.read_bytes() == split_bytes(result.split)
    create_split(SplitConfig(layout=demo_layout))  # restore the session's full split
