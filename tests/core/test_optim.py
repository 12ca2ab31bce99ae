"""The learning-rate schedules: warm-up capped at one epoch, three shapes, stretch on resume."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config

from gunctl.config import Layout
from gunctl.core.optim import default_batch_size, lr_factor, make_optimizer, make_scheduler


def config(**overrides):
    return tiny_config(Layout(), **overrides)


def test_warm_up_is_linear_and_capped_at_one_epoch():
    factor = lr_factor(config(lr_schedule="constant", warmup_steps=4, epochs=3), 10)
    assert [factor(s) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    capped = lr_factor(config(lr_schedule="constant", warmup_steps=50, epochs=3), 5)
    assert capped(0) == pytest.approx(1 / 5) and capped(4) == pytest.approx(1.0)
    assert lr_factor(config(lr_schedule="constant", warmup_steps=0), 5)(0) == 1.0


def test_cosine_decays_to_its_floor_at_the_last_step():
    factor = lr_factor(config(lr_schedule="cosine", warmup_steps=0, epochs=2), 50)
    assert factor(0) == pytest.approx(1.0)
    # 100 steps: a quarter of the way the cosine is at 45 degrees, (1 + 1/sqrt(2)) / 2
    assert factor(25) == pytest.approx(0.8535534)
    assert factor(50) == pytest.approx(0.5)  # half way
    assert factor(75) == pytest.approx(0.1464466)
    # (1 + cos(171 degrees)) / 2 = 0.0062 is below the floor: the floor holds
    assert factor(95) == pytest.approx(0.01)
    assert factor(100) == pytest.approx(0.01) and factor(500) == pytest.approx(0.01)


def test_step_drops_tenfold_at_70_and_90_percent():
    factor = lr_factor(config(lr_schedule="step", warmup_steps=0, epochs=10), 10)
    assert [factor(s) for s in (0, 69, 70, 89, 90, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )


def test_resume_with_more_epochs_stretches_the_schedule():
    short = lr_factor(config(lr_schedule="cosine", warmup_steps=0, epochs=2), 10)
    longer = lr_factor(config(lr_schedule="cosine", warmup_steps=0, epochs=4), 10)
    assert short(10) == pytest.approx(0.5) and longer(20) == pytest.approx(0.5)
    assert longer(10) > short(10)


def test_scheduler_and_optimizers_follow_the_config():
    model = torch.nn.Linear(2, 1)
    for name, kind in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        optimizer = make_optimizer(model, config(optimizer=name))
        assert type(optimizer) is kind and optimizer.defaults["fused"]  # one kernel, CPU too
    sgd = make_optimizer(model, config(optimizer="sgd", lr=0.1))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    scheduler = make_scheduler(sgd, config(lr_schedule="constant", warmup_steps=2, lr=0.1), 10)
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.05)
    sgd.step()
    scheduler.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.1)
    assert default_batch_size(torch.device("cpu")) == 2


def test_a_replanned_schedule_goes_on_from_where_it_stood():
    """A --minutes budget that lengthens or shortens the run mid-way: the cosine carries on
    from its current value to its floor over the remaining steps, with no jump."""
    config = tiny_config(Layout("unused"), epochs=10, lr_schedule="cosine", warmup_steps=1)
    first = lr_factor(config, steps_per_epoch=10)  # 100 steps
    where = first.progress(40)
    for total in (60, 200):  # shortened, lengthened
        again = lr_factor(config, 10, total_steps=total, start=(40, where))
        assert again(40) == pytest.approx(first(40))
        assert again(total) == pytest.approx(0.01)  # the floor, at the new end
        assert abs(again(41) - again(40)) < 0.05
