import hashlib

from PIL import Image

from gunctl.core.demo import generate
from gunctl.core.labels import parse_label


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    generate(tmp_path / "a", count=6, seed=3)
    generate(tmp_path / "b", count=6, seed=3)
    generate(tmp_path / "c", count=6, seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_kaggle_layout_boxes_inside_and_some_negatives(tmp_path):
    generate(tmp_path, count=40, seed=0)
    counts = []
    for n in range(1, 41):
        image = Image.open(tmp_path / "Images" / f"{n}.jpeg")
        assert image.format == "JPEG" and image.mode == "RGB"
        parsed = parse_label((tmp_path / "Labels" / f"{n}.txt").read_bytes(), "L")
        assert parsed.problems == []  # the count line agrees, every line parses
        for (x1, y1, x2, y2), _ in parsed.boxes:
            assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
            assert (x2 - x1) >= 20 and (y2 - y1) >= 20  # big enough to learn quickly
        counts.append(len(parsed.boxes))
    assert 0 in counts  # negatives
    assert max(counts) >= 2  # several guns in one image
    assert sum(counts) > 40
