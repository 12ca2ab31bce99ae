from gunctl.errors import shorten


def test_shorten_cuts_at_a_word_boundary_on_one_line():
    text = "HTTPSConnectionPool(host='www.kaggle.com', port=443): Max retries exceeded\nwith url"
    short = shorten(text, 60)
    assert len(short) <= 60 and "\n" not in short and short.endswith("…")
    assert short[:-1] == text[: len(short) - 1] and text[len(short) - 1] == " "  # whole words
    assert shorten("short", 60) == "short"
