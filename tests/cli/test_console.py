from types import SimpleNamespace

import pytest

from gunctl.cli import console
from gunctl.cli.train_display import TrainDisplay
from gunctl.config import ModelConfig, TrainConfig


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
    assert console.escape(raw) == shown


def test_printed_names_are_inert(capsys):
    console.warn("Images/[/]:fire:\x1b]0;title\x07\nsecond")
    printed = capsys.readouterr().err
    assert "\x1b" not in printed and "\x07" not in printed and "🔥" not in printed
    assert "Images/[/]:fire:\\x1b]0;title\\x07\\nsecond" in printed
    assert printed.count("\n") == 1


def _resumed_state(resumed_from: str, run_name: str) -> SimpleNamespace:
    config = TrainConfig(model=ModelConfig(name="fasterrcnn_resnet18_fpn"), epochs=4, batch_size=2)
    return SimpleNamespace(
        config=config,
        resumed_from=resumed_from,
        epoch=2,
        run_name=run_name,
        weights_origin="scratch",
        train_images=10,
        val_dataset=[0, 1, 2],
        world_size=1,
        device="cpu",
        precision="fp32",
    )


def test_a_resumed_runs_header_prints_bracketed_names_as_they_are(capsys):
    # Escaped once, a name shows as it is: "[x]" stays "[x]", with no stray backslash.
    state = _resumed_state("runs/a[x]/last.pth", "b[bold]c")
    TrainDisplay(live=False).on_fit_start(state)
    printed = capsys.readouterr().out
    assert "run b[bold]c: fasterrcnn_resnet18_fpn" in printed
    assert "resumed from runs/a[x]/last.pth at epoch 3" in printed
    assert "\\" not in printed
    assert "10 train / 3 val images, batch" in printed
