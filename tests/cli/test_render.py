import pytest

from gunctl.cli import render


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("a[/]b", "a\\[/]b"),
        ("[bold]x", "\\[bold]x"),
        (":fire:", ":fire:"),
        ("a\x1b[31mb", "a\\x1b[31mb"),  # "[31m" is no markup tag: left as is
        ("line\nbreak", "line\\nbreak"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("sep\u2028x", "sep\\u2028x"),
        ("bad\udcffutf8", "bad\\udcffutf8"),
        ("gun ü 1.jpeg", "gun ü 1.jpeg"),
    ],
)
def test_escape_shows_markup_and_controls_as_text(raw, shown):
    assert render.escape(raw) == shown


def test_printed_names_are_inert(capsys):
    render.warn("Images/[/]:fire:\x1b]0;title\x07\nsecond")
    printed = capsys.readouterr().err
    assert "\x1b" not in printed and "\x07" not in printed and "🔥" not in printed
    assert "Images/[/]:fire:\\x1b]0;title\\x07\\nsecond" in printed
    assert printed.count("\n") == 1
