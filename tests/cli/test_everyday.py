"""Everyday use through the CLI: help, config files, run management, output at a given width,
early stopping and checkpoint sizes (issue 13). Demo data and a tiny model, as elsewhere."""

import json
import subprocess
import sys

import pytest
from helpers import TINY_CLI

from gunctl.core.checkpoint import load_checkpoint

RUN = "a-rather-long-run-name-20261126-203000"  # longer than an 80-column table would allow


@pytest.fixture(scope="module")
def out(module_tmp):
    """Demo data (16 images, split), and one run: 3 epochs asked, --patience 1, a subset."""
    from typer.testing import CliRunner

    from gunctl.cli import app

    out = module_tmp / "artifacts"
    runner = CliRunner()
    for args in (["ingest", "--source", "demo", "--count", "16"], ["split"]):
        assert runner.invoke(app, [*args, "--out", str(out)]).exit_code == 0
    result = runner.invoke(
        app,
        [
            *("train", "--epochs", "3", "--subset", "8", "--patience", "1"),
            *("--save-period", "1", "--out", str(out), "--run-name", RUN, *TINY_CLI),
            *("--lr", "1e-9"),  # the last --lr wins: too small to learn, mAP stays at 0
        ],
    )
    assert result.exit_code == 0, result.output
    out.joinpath("train-output.txt").write_text(result.stdout + result.stderr)
    return out


def _help(gunctl, *command, columns=100):
    result = gunctl(*command, "--help", env={"COLUMNS": str(columns)})
    assert result.exit_code == 0
    return result.stdout


def test_flags_render_as_flags_with_every_default_and_description(gunctl):
    text = _help(gunctl, "ingest")
    assert "<bool>" not in text and "--force " in text
    train = _help(gunctl, "train", columns=200)
    assert "8 on CUDA, 2 on the CPU" in train  # --batch-size's default, said
    assert "L2 penalty" in train  # --weight-decay's description
    from typer.main import get_command

    from gunctl.cli import app

    group = get_command(app)
    for name in ("ingest", "split", "train", "validate", "tb"):
        for param in group.commands[name].params:
            if param.param_type_name == "option" and not param.hidden:
                assert param.help, f"{name} {param.opts} has no description"
                shows = param.show_default or param.default not in (None, False) or param.is_flag
                assert shows, f"{name} {param.opts} shows no default"


def test_a_runs_config_yaml_uses_only_names_train_accepts():
    from typer.main import get_command

    from gunctl.cli import app
    from gunctl.cli.options import _config_names
    from gunctl.config import TrainConfig, train_options

    accepted = _config_names(get_command(app).commands["train"].params)
    assert set(train_options(TrainConfig())) <= set(accepted)
    assert _config_names(get_command(app).commands["validate"].params)["split"] == "part"


def test_debug_works_after_the_command_and_completion_is_offered(gunctl, tmp_path):
    from gunctl.errors import SourceError

    with pytest.raises(SourceError):  # the traceback, not one line
        gunctl("ingest", "--source", tmp_path / "nope", "--out", tmp_path / "a", "--debug")
    assert "--install-completion" in _help(gunctl)


def test_split_and_ingest_print_paths_on_one_line(gunctl, tmp_path):
    out = tmp_path / "a-folder-with-a-fairly-long-name" / "and-another-one-below-it" / "out"
    for columns in (80, 120):
        env = {"COLUMNS": str(columns)}
        ingest = gunctl(
            "ingest", "--source", "demo", "--count", "6", "--out", out, "--force", env=env
        )
        assert ingest.exit_code == 0
        assert "image widths (px)" in ingest.stdout and "largest" not in ingest.stdout
        split = gunctl("split", "--out", out, env=env)
        path = str(out / "splits" / "split.json")
        assert any(path in line for line in split.stdout.splitlines()), split.stdout


def test_failed_ingest_leaves_no_out_folder(gunctl, tmp_path):
    out = tmp_path / "new-out"
    result = gunctl("ingest", "--source", tmp_path / "nope", "--out", out)
    assert result.exit_code == 2 and not out.exists()


def test_validate_artifacts_is_a_deprecated_alias_of_out(gunctl, tmp_path):
    result = gunctl("validate", tmp_path / "nope.pth", "--artifacts", tmp_path)
    assert result.exit_code == 2 and "--artifacts is deprecated" in result.stderr
    text = _help(gunctl, "validate")
    assert "--artifacts" not in text and "--report" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x: &x [1, 1]\nepochs: *x\n", "aliases (*name) are not accepted"),
        ("epochs: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("# " + "x" * (2 * 1024 * 1024) + "\n", "larger than 1 MiB"),
    ],
    ids=["alias", "deep", "huge"],
)
def test_hostile_config_files_are_one_line(gunctl, tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = gunctl("train", "--config", config, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "bad.yaml" in result.stderr and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_text_file_as_checkpoint_says_so(gunctl, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are my notes\n")
    result = gunctl("validate", text, "--out", tmp_path)
    assert result.exit_code == 2
    assert "not a checkpoint (a text file" in result.stderr and "unsafe" not in result.stderr


@pytest.mark.slow
def test_patience_stops_early_keeping_the_best_weights_only(out):
    run = out / "runs" / RUN
    printed = (out / "train-output.txt").read_text()
    last = load_checkpoint(run / "last.pth")
    # At --lr 1e-9 the tiny model scores mAP 0 at every epoch: epoch 1 stays the best, epoch 2
    # ends it.
    assert last["epoch"] == 2 and "stopped after epoch 2 of 3" in printed
    assert "--patience 1" in printed and "batch 4 (4 per process x 1 process)" in printed
    best = load_checkpoint(run / "best.pth")
    assert best["kind"] == "weights" and "optimizer" not in best and last["kind"] == "full"
    assert best["epoch"] == 1 and best["class_names"] and best["metrics"]
    assert (run / "best.pth").stat().st_size < (run / "last.pth").stat().st_size / 2
    assert (run / "best.pth").samefile(out / "models" / "fasterrcnn.pth")
    assert (run / "epoch_1.pth").exists() and (run / "epoch_2.pth").exists()  # --save-period 1


@pytest.mark.slow
def test_resume_from_weights_only_is_refused(gunctl, out):
    best = out / "runs" / RUN / "best.pth"
    result = gunctl("train", "--resume", best, "--epochs", "4", "--out", out)
    assert result.exit_code == 2 and "weights-only checkpoint cannot resume" in result.stderr


@pytest.mark.slow
def test_validate_scores_the_runs_val_images_by_default(gunctl, out):
    run = out / "runs" / RUN
    default = gunctl("validate", run / "last.pth", "--out", out, "--json")
    assert default.exit_code == 0, default.output
    report = json.loads(default.stdout)
    val_images = load_checkpoint(run / "last.pth")["val_images"]
    assert report["metrics"]["images"] == len(val_images) == 2  # --subset 8: 2 of them
    assert report["data"].startswith("the run's val images (2, --subset 8")
    split_val = json.loads(
        gunctl("validate", run / "last.pth", "--out", out, "--split", "val", "--json").stdout
    )
    assert split_val["metrics"]["images"] == 3  # the whole split's val part
    options = out / "validate.yaml"
    options.write_text(f"split: all\njson: true\nout: {out}\n")
    from_file = gunctl("validate", run / "last.pth", "--config", options)
    assert from_file.exit_code == 0, from_file.output
    assert json.loads(from_file.stdout)["metrics"]["images"] == 16  # the file's --split all


@pytest.mark.slow
def test_config_file_repeats_the_run_and_the_command_line_wins(gunctl, out, tmp_path):
    config = out / "runs" / RUN / "config.yaml"
    again = gunctl("train", "--config", config, "--out", out, "--run-name", "again", "--quiet")
    assert again.exit_code == 0, again.output
    first = load_checkpoint(out / "runs" / RUN / "last.pth")["history"]
    second = load_checkpoint(out / "runs" / "again" / "last.pth")["history"]
    assert [r["train"]["loss"] for r in first] == [r["train"]["loss"] for r in second]
    assert len(first) == 2  # the file's --patience came along, and stopped it the same way

    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nbatchsize: 3\n")
    result = gunctl("train", "--config", bad, "--out", out)
    assert result.exit_code == 2
    assert "unknown option 'batchsize'" in result.stderr and "'batch_size'" in result.stderr
    not_yaml = tmp_path / "list.yaml"
    not_yaml.write_text("- epochs\n")
    assert gunctl("train", "--config", not_yaml, "--out", out).exit_code == 2


@pytest.mark.slow
def test_runs_list_shows_whole_names_at_80_columns_and_rm_refuses_a_locked_run(gunctl, out):
    table = gunctl("tb", "--list", "--out", out, env={"COLUMNS": "80"})
    assert table.exit_code == 0
    assert RUN in table.stdout and max(len(line) for line in table.stdout.splitlines()) <= 80
    listed = json.loads(gunctl("runs", "list", "--out", out, "--json").stdout)["runs"]
    ours = next(run for run in listed if run["name"] == RUN)
    assert ours["checkpoint"].endswith("best.pth") and ours["last_checkpoint"].endswith("last.pth")

    from gunctl.core.runlock import RunLock

    (out / "runs" / "doomed").mkdir()
    (out / "runs" / "doomed" / "last.pth").write_bytes(b"x")
    with RunLock(out / "runs" / "doomed"):
        locked = gunctl("runs", "rm", "doomed", "--out", out)
    assert locked.exit_code == 2 and "in use" in locked.stderr
    assert gunctl("runs", "rm", "doomed", "--out", out).exit_code == 0
    assert not (out / "runs" / "doomed").exists()
    assert gunctl("runs", "rm", "../raw", "--out", out).exit_code == 2
    assert (out / "raw").exists()


def test_failed_run_leaves_no_folder(gunctl, tmp_path):
    out = tmp_path / "empty-out"
    result = gunctl("train", "--out", out, "--run-name", "r", *TINY_CLI)
    assert result.exit_code == 2  # nothing ingested
    assert not (out / "runs" / "r").exists()


def test_import_gunctl_cli_loads_no_torch():
    code = (
        "import sys, gunctl.cli; "
        "heavy = [m for m in ('torch', 'torchvision', 'tensorboard', 'kagglehub', 'torchmetrics',"
        " 'yaml', 'PIL') if m in sys.modules]; print(heavy)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_tb_list_is_silent_about_purged_steps_of_a_resumed_run(gunctl, tmp_path):
    """A resume after an interrupted epoch rewrites steps; TensorBoard's reader then warns
    "Detected out of order event.step" on stderr unless gunctl quiets it."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "runs" / "resumed"
    for steps, purge in (((1, 2, 3, 4), None), ((3, 4, 5), 3)):  # as gunctl's resume does
        writer = SummaryWriter(log_dir=str(run), purge_step=purge)
        for step in steps:
            writer.add_scalar("train/loss", 1.0 / step, step)
        writer.close()
    result = gunctl("tb", "--list", "--json", "--out", tmp_path)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["runs"][0]["name"] == "resumed"
    assert "out of order" not in result.stderr
