from gunctl.core.labels import check_boxes, format_label, parse_label, read_boxes


def kinds(problems):
    return [p.kind for p in problems]


def test_parses_count_and_boxes():
    parsed = parse_label(b"2\n1 2 30 40\n5 6 70 80\n", "Labels/1.txt")
    assert parsed.usable and parsed.problems == []
    assert [box for box, _ in parsed.boxes] == [(1, 2, 30, 40), (5, 6, 70, 80)]
    assert [line for _, line in parsed.boxes] == [2, 3]


def test_accepts_crlf_bom_trailing_spaces_blank_lines_and_floats():
    data = "\ufeff1  \r\n\r\n 1.5 2 30.25 40 \r\n\r\n".encode()
    parsed = parse_label(data, "Labels/1.txt")
    assert parsed.problems == []
    assert parsed.boxes == [((1.5, 2.0, 30.25, 40.0), 3)]


def test_zero_boxes_is_a_valid_negative():
    parsed = parse_label(b"0\n", "Labels/7.txt")
    assert parsed.usable and parsed.boxes == [] and parsed.problems == []


def test_empty_and_binary_files_are_unusable():
    assert not parse_label(b"", "L").usable
    assert not parse_label(b"\n \n", "L").usable
    assert kinds(parse_label(b"\xff\xfe\x00garbage", "L").problems) == ["empty_label"]


def test_malformed_lines_are_dropped_with_their_line_number():
    parsed = parse_label(b"3\n1 2 3 4\nfoo bar 1 2\n1 2 3\n", "Labels/3.txt")
    assert [box for box, _ in parsed.boxes] == [(1, 2, 3, 4)]
    bad = [p for p in parsed.problems if p.kind == "malformed_line"]
    assert [p.line for p in bad] == [3, 4]
    assert "Labels/3.txt:3" in str(bad[0])


def test_count_mismatch_keeps_the_box_lines():
    parsed = parse_label(b"3\n1 2 3 4\n", "L")
    assert len(parsed.boxes) == 1
    assert kinds(parsed.problems) == ["count_mismatch"]
    assert "says 3, found 1" in str(parsed.problems[0])


def test_bad_count_line_is_reported():
    parsed = parse_label(b"x\n1 2 3 4\n", "L")
    assert kinds(parsed.problems) == ["malformed_line"] and parsed.problems[0].line == 1
    assert len(parsed.boxes) == 1


def test_check_boxes_swaps_clips_and_drops():
    boxes = [
        ((10, 10, 5, 5), 2),  # swapped
        ((-5, -5, 20, 20), 3),  # negative: clipped
        ((90, 10, 120, 20), 4),  # crosses the right border: clipped
        ((200, 200, 210, 210), 5),  # wholly outside: dropped
        ((3, 3, 3, 9), 6),  # zero width: dropped
    ]
    kept, problems = check_boxes(boxes, 100, 50, "Labels/9.txt")
    assert kept == [(5, 5, 10, 10), (0, 0, 20, 20), (90, 10, 100, 20)]
    assert kinds(problems) == [
        "swapped_corners",
        "box_clipped",
        "box_clipped",
        "box_outside",
        "zero_area_box",
    ]
    assert [p.line for p in problems] == [2, 3, 4, 5, 6]


def test_format_label_round_trips():
    text = format_label([(1.0, 2.0, 3.5, 4.0), (0.0, 0.0, 10.0, 10.0)])
    assert text == "2\n1 2 3.5 4\n0 0 10 10\n"
    assert read_boxes(text.encode(), 100, 100, "L") == [(1, 2, 3.5, 4), (0, 0, 10, 10)]
