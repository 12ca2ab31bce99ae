"""Shared fixtures: small data trees built in tmp_path, and the real sample when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import jpeg_bytes, run_gunctl, write_tree

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("GUNCTL_SAMPLE_DATA", ROOT.parent / "shared" / "data" / "guns-sample"))


@pytest.fixture(autouse=True)
def _plain_core_logger():
    """The CLI routes the "gunctl" logger to Rich and stops it propagating (for the whole
    process); give every test the plain logger, so that caplog sees the core's warnings
    whatever ran before (module fixtures that run the CLI included)."""
    import logging

    logger = logging.getLogger("gunctl")

    def reset() -> None:
        logger.handlers.clear()
        logger.propagate, logger.level = True, logging.NOTSET

    reset()
    yield
    reset()


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    """Three good images (one negative) in the Kaggle layout."""
    return write_tree(
        tmp_path / "src",
        {"1.jpeg": jpeg_bytes(), "2.jpeg": jpeg_bytes(), "10.jpeg": jpeg_bytes()},
        {"1.txt": "1\n5 5 20 20\n", "2.txt": "2\n1 1 10 10\n30 20 60 40\n", "10.txt": "0\n"},
    )


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Path:
    """A folder for the outputs a test module's tests share, removed when they end: training
    outputs are hundreds of MB and pytest would keep them to the end of the session."""
    import shutil

    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_layout(tmp_path_factory):
    """The demo data set (40 images), ingested and split once per session."""
    from gunctl.config import IngestConfig, Layout, SplitConfig
    from gunctl.core.ingest import ingest
    from gunctl.core.split import create_split

    layout = Layout(tmp_path_factory.mktemp("demo") / "artifacts")
    ingest(IngestConfig(source="demo", layout=layout))
    create_split(SplitConfig(layout=layout))
    return layout


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    """12 demo images ingested and split by real gunctl processes, once per test module (the
    tests of untrusted inputs refuse before writing into it, or use ``demo_copy``)."""
    out = tmp_path_factory.mktemp("demo") / "artifacts"
    assert run_gunctl("ingest", "--source", "demo", "--count", "12", "--out", out).returncode == 0
    assert run_gunctl("split", "--out", out).returncode == 0
    return out


@pytest.fixture
def demo_copy(demo_out, tmp_path) -> Path:
    """A private copy of the small demo data set and its split, beside a sibling folder."""
    import shutil

    out = tmp_path / "artifacts"
    shutil.copytree(demo_out, out, ignore=shutil.ignore_patterns(".raw.lock", "runs"))
    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("must not change")
    return out


@pytest.fixture
def sample_data() -> Path:
    if not (SAMPLE / "Images").is_dir():
        pytest.skip(f"the real sample is not at {SAMPLE}")
    return SAMPLE


class Gunctl:
    """Runs gunctl through Typer's CliRunner, with stdout and stderr kept apart."""

    def __init__(self):
        from typer.testing import CliRunner

        self.runner = CliRunner()

    def __call__(self, *args, env: dict | None = None):
        from gunctl.cli import app

        return self.runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def gunctl() -> Gunctl:
    """The in-process runner (tests may monkeypatch it, e.g. a full disk); for a real process
    use helpers.run_gunctl."""
    return Gunctl()
