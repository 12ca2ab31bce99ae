from gunctl.core import tree


def test_numeric_stems_sort_numerically():
    stems = ["10", "2", "b", "1", "a", "100"]
    assert sorted(stems, key=tree.natural_key) == ["1", "2", "10", "100", "a", "b"]


def test_find_root_accepts_one_nested_folder(tmp_path, small_tree):
    assert tree.find_root(small_tree) == small_tree
    outer = small_tree.parent
    assert tree.find_root(outer) == small_tree
    (outer / "other").mkdir()
    assert tree.find_root(outer) is None


def test_extensions_are_case_insensitive():
    assert all(tree.is_image_name(n) for n in ["1.JPG", "1.jpg", "1.jpeg", "1.PNG"])
    assert not tree.is_image_name("notes.txt")
