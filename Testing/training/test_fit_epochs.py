"""train --fit-epochs (decision 115): the number of epochs becomes what fits in --max-minutes, and the learning-rate
schedule, the saved config and best.pt's provenance follow it. Uses test_train.py's tiny cache and run helpers."""
import csv
import json
import random

import pytest
import torch

import training.epoch_clock as epoch_clock
from KidneyTumorSegLib.checkpoint import load_checkpoint
from training.distributed import DistInfo
from training.epoch_clock import EpochClock, most_epochs
from training.optim import lr_factor
from training.recipe import TrainingRecipe
from training.train import main
from test_train import SMOKE, _state, cache, one_thread, run_args  # noqa: F401 (fixtures)


def brute_force(seconds, epoch_s, val_s, done, val_every):
    best, spent = 0, 0.0
    for n in range(1, 10_000):
        epoch = done + n
        spent += epoch_s + (val_s if val_every and epoch % val_every == 0 else 0.0)
        last_val = val_s if val_every and epoch % val_every else 0.0  # the last epoch is validated anyway
        if spent + last_val > seconds:
            return best
        best = n
    raise AssertionError("no end")


def test_most_epochs_counts_the_validations_of_the_epochs_it_adds():
    assert most_epochs(100, 10, 5, 0, 3) == 8    # epochs 1-8: 80 s + validations 3, 6 and the last (8): 95 s
    assert most_epochs(100, 10, 5, 2, 3) == 8    # epochs 3-10: 80 s + validations 3, 6, 9, 10: 100 s
    assert most_epochs(100, 10, 5, 0, None) == 10
    assert most_epochs(9.9, 10, 0, 0, None) == 0 and most_epochs(-5, 10, 5, 0, 3) == 0
    rng = random.Random(7)
    for _ in range(300):
        args = (rng.uniform(-10, 400), rng.uniform(0.5, 20), rng.uniform(0, 30), rng.randrange(0, 12),
                rng.choice([None, 1, 2, 5, 10]))
        assert most_epochs(*args) == brute_force(*args), args


def test_epochs_that_fit_takes_the_later_epochs_mean_and_the_measured_validation(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(epoch_clock.time, "perf_counter", lambda: now[0])
    clock, info, cpu = EpochClock(2.0), DistInfo(), torch.device("cpu")
    clock.epoch_done(20.0, 18.0, validated=False)  # the first pays the warm-up: left out
    with pytest.raises(ValueError, match="two finished epochs"):
        clock.epochs_that_fit(1, None, info, cpu)
    clock.epoch_done(7.0, 6.0, validated=False)
    clock.epoch_done(9.0, 8.0, validated=False)
    now[0] = 93.0  # 27 s left; an epoch costs 7 (the mean of 6 and 8) + 2 s (the longest saving)
    assert clock.epochs_that_fit(3, None, info, cpu) == 3 + 3  # (8 s alone, or 10.7 with the first: 2 epochs)
    # an unseen validation is guessed at one epoch's optimisation (7 s): epochs 4 and 5, validated at 5, 25 s
    assert clock.epochs_that_fit(3, 5, info, cpu) == 5
    clock.epoch_done(30.0, 7.0, validated=True)  # its validation and saving took 23 s: 21 s more than saving
    now[0] = 59.0  # 61 s left: epochs 5 and 6, both validated, 2 x 9 + 2 x 21 = 60 s
    assert clock.epochs_that_fit(4, 5, info, cpu) == 6  # (23 s counted whole: 5; the 7-s guess kept: 9)
    # ranks agree on the mean: another rank with 21 s left makes 41 s, room for epoch 5 alone (30 s)
    monkeypatch.setattr(epoch_clock.ddp, "all_reduce_sum",
                        lambda t, info: t + torch.tensor([21.0, 9.0, 21.0], dtype=t.dtype))
    assert clock.epochs_that_fit(4, 5, DistInfo(world_size=2), cpu) == 5
    now[0] = 119.0  # 1 s left: nothing fits, but the run gets one more epoch (the clock's stop is the safety net)
    monkeypatch.undo()
    monkeypatch.setattr(epoch_clock.time, "perf_counter", lambda: now[0])
    assert clock.epochs_that_fit(4, 5, info, cpu) == 5
    with pytest.raises(ValueError, match="max-minutes"):
        EpochClock(None).epochs_that_fit(0, 5, info, cpu)


def test_the_clock_leaves_the_warm_up_epoch_out_of_its_stop(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(epoch_clock.time, "perf_counter", lambda: now[0])
    clock, info, cpu = EpochClock(1.0), DistInfo(), torch.device("cpu")
    clock.epoch_done(30.0, 28.0)
    now[0] = 35.0  # alone, the 30-s warm-up epoch is the estimate: 35 + 30 > 60
    assert clock.no_time_for_another(info, cpu)
    clock.epoch_done(10.0, 9.0)
    now[0] = 45.0  # then the later epochs' longest: 45 + 10 <= 60
    assert not clock.no_time_for_another(info, cpu)


def test_fit_epochs_moves_the_schedule_config_and_provenance(cache, tmp_path, monkeypatch):
    import training.train as train_module
    config = tmp_path / "ten.json"
    config.write_text(json.dumps({"base": str(SMOKE), "training": {"epochs": 10, "val_every": 3, "lr": 0.003}}),
                      encoding="utf-8")
    fits, lrs = [], []
    monkeypatch.setattr(EpochClock, "epochs_that_fit",
                        lambda self, done, val_every, info, device: fits.append((done, val_every)) or 5)
    real_step = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", lambda model, batch, loss_fn, optimizer, *a: lrs.append(
        optimizer.param_groups[0]["lr"]) or real_step(model, batch, loss_fn, optimizer, *a))
    args = lambda out, *more: [*run_args(cache, out, "--iterations", "2", "--seed", "3", *more)[2:],  # noqa: E731
                               "--config", str(config)]
    a = tmp_path / "a"
    assert main(args(a, "--fit-epochs", "--max-minutes", "60")) == 0
    assert fits == [(2, 3), (3, 3), (4, 3)]  # before epochs 3-5: two epochs measured first (the first is the warm-up)
    state = _state(a / "last.pt")
    assert state["epoch"] == 5 and state["config"]["training"]["epochs"] == 5
    assert json.loads((a / "config.json").read_text())["training"]["epochs"] == 5
    assert load_checkpoint(a / "best.pt").provenance["epochs"] == 5
    with (a / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["val_dice_mean"] and not rows[-2]["val_dice_mean"]  # the fitted last epoch is validated
    fitted, planned = TrainingRecipe.from_dict(state["config"]["training"]), TrainingRecipe(
        lr=0.003, epochs=10, iterations_per_epoch=2)
    # every step ran at its schedule's rate: 10 epochs' for the first four, the fitted 5 epochs' from the first step
    # after the fit on (the scheduler had set that step's rate from the old horizon)
    expected = [0.003 * lr_factor(planned if i < 4 else fitted, i) for i in range(10)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert expected[9] < 0.1 * 0.003 * lr_factor(planned, 9)  # the fitted schedule ended, 10 epochs' would not
    assert float(rows[-1]["lr"]) == pytest.approx(expected[9], rel=1e-6)

    # stopped after its first fitted epoch (the third), resumed without --fit-epochs: the saved state keeps the fit
    b = tmp_path / "b"
    assert main(args(b, "--fit-epochs", "--max-minutes", "60", "--stop-after", "3")) == 0
    assert _state(b / "last.pt")["config"]["training"]["epochs"] == 5
    assert main(args(b, "--resume")) == 0
    assert _state(b / "last.pt")["epoch"] == 5


def test_fit_epochs_needs_a_time_limit_and_no_fixed_epochs(cache, tmp_path):
    with pytest.raises(SystemExit):
        main(run_args(cache, tmp_path / "x", "--fit-epochs"))
    with pytest.raises(SystemExit):
        main(run_args(cache, tmp_path / "y", "--fit-epochs", "--max-minutes", "5", "--epochs", "4"))
