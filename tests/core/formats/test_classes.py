"""Class names through split, model size and checkpoints (without training)."""

from __future__ import annotations

import pytest

from gunctl.config import TrainConfig
from gunctl.core.checkpoint import class_names
from gunctl.core.run_setup import Resumed, with_classes
from gunctl.core.split import class_names_of
from gunctl.errors import CheckpointError


def test_model_outputs_follow_the_class_names():
    config = with_classes(TrainConfig(), ["pistol", "rifle", "knife"], None)
    assert config.model.num_classes == 4
    assert with_classes(TrainConfig(), ["gun"], None).model.num_classes == 2


def test_resume_on_other_classes_is_refused_and_one_class_checkpoints_still_resume():
    old = {"class_names": ["background", "gun"]}  # what every checkpoint so far holds
    assert with_classes(TrainConfig(), ["gun"], Resumed(old, "last.pth")).model.num_classes == 2
    with pytest.raises(CheckpointError, match="trained on classes gun, but the data set has"):
        with_classes(TrainConfig(), ["pistol", "rifle"], Resumed(old, "last.pth"))


def test_checkpoint_and_document_class_names():
    assert class_names({"class_names": ["background", "gun"]}, "c.pth") == ["background", "gun"]
    assert class_names({"class_names": ["background", "a", "b"]}, "c.pth")[1:] == ["a", "b"]
    with pytest.raises(CheckpointError, match="class_names"):
        class_names({"class_names": ["background"]}, "c.pth")
    assert class_names_of({}) == ["gun"]  # manifests and splits written before classes
    assert class_names_of({"class_names": ["a", "b"]}) == ["a", "b"]
