"""EMA of weights, the --minutes planner, and flip TTA's box fusion."""

import pytest
import torch
from torch import nn

from gunctl.core.budget import Budget, Plan, plan
from gunctl.core.ema import MIN_WINDOW, ModelEma, fitted_decay
from gunctl.core.tta import FlipTTA, weighted_box_fusion


def test_ema_follows_the_weights_and_round_trips():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(3.0)
    start = ema.module[0].weight.clone()
    ema.update(model)  # warm-up: min(0.5, 2/11) -> mostly the new weights
    expected = start + (1.0 - start) * (1 - 2 / 11)
    assert torch.allclose(ema.module[0].weight, expected)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)  # buffers copied
    other = ModelEma(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.decay == 0.5
    assert torch.equal(other.module[0].weight, ema.module[0].weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_fitted_decay_windows():
    assert fitted_decay(100) == pytest.approx(1 - 1 / MIN_WINDOW)
    assert fitted_decay(5000) == pytest.approx(1 - 1 / 500)


def test_plan_fits_epochs_and_validation_to_the_budget():
    # 100 s left after epoch 1; epochs of 20 s, validation 2 s: 4 more (4*20 + 4*2 <= 95)
    assert plan(100.0, 20.0, 2.0, done=1) == Plan(epochs=5, val_every=1)
    # validation as long as training: validate every 7th epoch (at most 15 % of the time)
    assert plan(1000.0, 10.0, 10.0, done=0).val_every == 7
    assert plan(1.0, 20.0, 2.0, done=1) == Plan(epochs=1, val_every=1)  # none more fits


def test_wbf_fuses_the_two_views_and_halves_lonely_boxes():
    a = {
        "boxes": torch.tensor([[10.0, 10, 50, 50], [100, 100, 120, 120]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([1, 1]),
    }
    b = {
        "boxes": torch.tensor([[12.0, 10, 52, 50]]),
        "scores": torch.tensor([0.7]),
        "labels": torch.tensor([1]),
    }
    fused = weighted_box_fusion([a, b])
    assert len(fused["boxes"]) == 2
    assert torch.allclose(
        fused["boxes"][0],
        torch.tensor([(10 * 0.9 + 12 * 0.7) / 1.6, 10, (50 * 0.9 + 52 * 0.7) / 1.6, 50]),
    )
    assert fused["scores"].tolist() == pytest.approx([0.8, 0.4])
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}
    assert len(weighted_box_fusion([empty, empty])["boxes"]) == 0


class _FindsTheLeftHalf(nn.Module):
    """A fake detector: one box around the brightest column's side of the image."""

    def forward(self, images, targets=None):
        out = []
        for image in images:
            width = image.shape[-1]
            left = image[..., : width // 2].sum() > image[..., width // 2 :].sum()
            box = [0.0, 0, width / 2, 10] if left else [width / 2, 0, float(width), 10]
            out.append(
                {
                    "boxes": torch.tensor([box]),
                    "scores": torch.tensor([0.8]),
                    "labels": torch.tensor([1]),
                }
            )
        return out


def test_flip_tta_maps_the_mirrored_boxes_back():
    image = torch.zeros(3, 10, 40)
    image[..., :20] = 1.0
    fused = FlipTTA(_FindsTheLeftHalf()).eval()([image])[0]
    assert len(fused["boxes"]) == 1  # both views found the same box: one detection
    assert fused["boxes"][0].tolist() == [0.0, 0.0, 20.0, 10.0]
    assert fused["scores"].item() == pytest.approx(0.8)


def test_final_plan_from_the_first_epochs_wall_time():
    budget = Budget(minutes=10, started=0.0)
    budget.epoch_started = 0.0
    # epoch 1: 60 s of which 6 validating; 540 s left, 60 s per epoch -> 8 more
    assert budget.final(now=60.0, val=6.0) == Plan(epochs=9, val_every=1)
    late = Budget(minutes=0.01, started=0.0)
    late.epoch_started = 0.0
    assert late.final(now=100.0, val=1.0).epochs == 1  # none more fits
    assert late.final(now=100.0, val=1.0, least=2).epochs == 2  # to finish a longer schedule


def test_refits_follow_the_epochs_after_the_first():
    budget = Budget(minutes=10, started=0.0)
    budget.epoch_started = 0.0
    # a slow first epoch (start-up, a busy machine): 90 s, 6 validating -> 5 more of 90 s
    assert budget.final(now=90.0, val=6.0) == Plan(epochs=6, val_every=1)
    # epoch 2 took 60 s: 445 s left (less the end's 5) at 60 s an epoch -> 7 more, 9 in all
    assert budget.refit(now=150.0, epoch_wall=60.0, val=6.0, done=2, epochs=6) == Plan(9, 1)
    # the same pace again: the count stands
    assert budget.refit(now=210.0, epoch_wall=60.0, val=6.0, done=3, epochs=9) is None
    # out of time: still one epoch more, so that the schedule's decay runs
    assert budget.refit(now=599.0, epoch_wall=60.0, val=0.0, done=4, epochs=9).epochs == 5
    # refits stop once a third of the epochs are done
    assert budget.refitting(2, 9) and not budget.refitting(3, 9)
    assert not budget.probe(1.0)  # no provisional plan once the count is in force
