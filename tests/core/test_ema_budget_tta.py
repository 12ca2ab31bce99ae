"""EMA of weights, the --minutes planner, and flip TTA's box fusion."""

import pytest
import torch
from torch import nn

from gunctl.core.budget import Budget, Plan, plan
from gunctl.core.ema import MIN_WINDOW, ModelEma, fitted_decay
from gunctl.core.tta import FlipTTA, weighted_box_fusion


def test_ema_follows_the_weights_and_round_trips():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.zero_()
    ema = ModelEma(model, decay=0.5)  # starts from the zero weights
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(3.0)
    # Warm-up as TensorFlow's: the decay is min(0.5, (1+n)/(10+n)); by hand, 2/11 after the
    # first update keeps 9/11 of the new weights, then 3/12 gives 1/4 * 9/11 + 3/4 = 21/22.
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), 0.8181818))
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)  # buffers copied
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, torch.full((2, 2), 0.9545455))
    other = ModelEma(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 2 and other.decay == 0.5
    assert torch.equal(other.module[0].weight, ema.module[0].weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_fitted_decay_windows():
    assert fitted_decay(100) == pytest.approx(1 - 1 / MIN_WINDOW)
    assert fitted_decay(5000) == pytest.approx(1 - 1 / 500)


def test_plan_fits_epochs_and_validation_to_the_budget():
    # 100 s left after epoch 1; epochs of 20 s, validation 2 s: 4 more (4*20 + 4*2 <= 95),
    # 7 s over (more than a quarter epoch): one more, cut short at the budget's end
    assert plan(100.0, 20.0, 2.0, done=1) == Plan(epochs=6, val_every=1)
    assert plan(92.0, 20.0, 2.0, done=1) == Plan(epochs=5, val_every=1)  # 3 s over: no part
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
    # epoch 1: 60 s of which 6 validating; 535 s left (less the end's 5), 60 s per epoch -> 8
    # more, and 55 s over (more than a quarter epoch): one more, cut short at the budget's end
    assert budget.final(now=60.0, val=6.0) == Plan(epochs=10, val_every=1)
    late = Budget(minutes=0.01, started=0.0)
    late.epoch_started = 0.0
    assert late.final(now=100.0, val=1.0).epochs == 1  # none more fits
    assert late.final(now=100.0, val=1.0, least=2).epochs == 2  # to finish a longer schedule


def test_refits_follow_the_epochs_after_the_first():
    budget = Budget(minutes=10, started=0.0)
    budget.epoch_started = 0.0
    # a slow first epoch (start-up, a busy machine): 90 s, 6 validating -> 5 more of 90 s,
    # 55 s over: one more (cut short)
    assert budget.final(now=90.0, val=6.0) == Plan(epochs=7, val_every=1)
    # epoch 2 took 60 s: 445 s left (less the end's 5) at 60 s an epoch -> 7 more and a part
    assert budget.refit(now=150.0, epoch_wall=60.0, val=6.0, done=2, epochs=7) == Plan(10, 1)
    # the same pace again: the count stands
    assert budget.refit(now=210.0, epoch_wall=60.0, val=6.0, done=3, epochs=10) is None
    # out of time: still one epoch more (cut to the step that fits by final_step)
    assert budget.refit(now=599.0, epoch_wall=60.0, val=0.0, done=4, epochs=10).epochs == 5
    # refits go on to the end of the run (in either direction; optim re-plans the schedule
    # from where it stands, see test_optim)
    faster = Budget(minutes=10, started=0.0)
    faster.epoch_started = 0.0
    assert faster.final(now=60.0, val=6.0).epochs == 10
    assert faster.refit(now=300.0, epoch_wall=30.0, val=3.0, done=5, epochs=10).epochs == 15
    assert not budget.probe(1.0)  # no provisional plan once the count is in force


def _simulate(minutes: float, step_seconds, steps: int = 20, val_steps: int = 4) -> float:
    """A --minutes run as the trainer drives Budget: ``step_seconds(t)`` is a step's time at
    wall time t; validation costs ``val_steps`` steps, the end 2 s. Returns the wall time."""
    budget, now, epochs, done, step = Budget(minutes, started=0.0), 0.0, 100, 0, 0
    budget.epoch_started = 0.0
    while done < epochs:
        began, final = now, done + 1 >= epochs
        for _ in range(steps):
            now += step_seconds(now)
            step += 1
            budget.record_step(step_seconds(now))  # as the trainer does, every step
            if budget.planned and final:
                end = budget.final_step(now, step, (done + 1) * steps)
                if end is not None and step >= end:
                    break
        val = val_steps * step_seconds(now)
        now += val
        done += 1
        if done == 1:
            epochs = budget.final(now, val).epochs
        elif done < epochs:
            fitted = budget.refit(now, now - began, val, done, epochs)
            epochs = fitted.epochs if fitted else epochs
    return now + 2.0


@pytest.mark.parametrize("minutes", [2, 10, 60])
def test_a_machine_that_slows_part_way_still_ends_within_the_margin(minutes):
    budget = 60.0 * minutes
    steady = _simulate(minutes, lambda t: 0.25)
    # a CPU hog from 40 % of the budget on: every step twice as slow
    hogged = _simulate(minutes, lambda t: 0.25 if t < 0.4 * budget else 0.5)
    # a machine that speeds up late (the hog ends at 60 %): the count never rises late
    freed = _simulate(minutes, lambda t: 0.5 if t < 0.6 * budget else 0.25)
    margin = max(0.02 * budget, 5.0)
    for wall in (steady, hogged, freed):
        assert abs(wall - budget) <= margin, (wall, budget)


def test_the_final_epoch_ends_at_the_step_that_fits():
    budget = Budget(minutes=1, started=0.0)
    budget.planned, budget.val_seconds, budget.step_at_val = True, 5.0, 1.0
    for _ in range(8):
        budget.record_step(1.0)
    # 60 s budget at 40 s: 60 - 40 - 5 (end) - 5 (validation) = 10 s: 10 steps more
    assert budget.final_step(now=40.0, step=100, planned_end=130) == 110
    assert budget.final_step(now=40.0, step=100, planned_end=105) is None  # the plan fits
    for _ in range(8):  # twice as slow now: the validation too (10 s), 5 s left: 2 steps
        budget.record_step(2.0)
    assert budget.final_step(now=40.0, step=100, planned_end=130) == 102
    assert budget.final_step(now=59.0, step=100, planned_end=130) == 100  # spent: stop now
    assert budget.margin() == 5.0 and Budget(minutes=60, started=0.0).margin() == 72.0
