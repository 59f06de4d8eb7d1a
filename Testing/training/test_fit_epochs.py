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


def test_epochs_that_fit_takes_the_later_epochs_mean_and_guesses_an_unseen_validation(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(epoch_clock.time, "perf_counter", lambda: now[0])
    clock, info, cpu = EpochClock(1.0), DistInfo(), torch.device("cpu")
    clock.epoch_done(12.0, 10.0, validated=False)  # the first epoch pays the warm-up: left out once others exist
    clock.epoch_done(7.0, 6.0, validated=False)
    now[0] = 19.0  # 41 s left; an epoch costs 6 + 2 (saving) s, an unseen validation is guessed at 6 s
    # epochs 3-5 with the validation of 5: 24 + 6 = 30 s; 3-6 would need 32 + 12 = 44 s
    assert clock.epochs_that_fit(2, 5, info, cpu) == 5
    assert clock.epochs_that_fit(2, None, info, cpu) == 2 + 5  # no validation: 5 x 8 s
    clock.epoch_done(26.0, 6.0, validated=True)  # a validation seen: 20 s
    now[0] = 45.0  # 15 s left: one epoch (8 s) + its validation (20 s) do not fit, but the run gets at least one
    assert clock.epochs_that_fit(3, 5, info, cpu) == 4
    with pytest.raises(ValueError, match="max-minutes"):
        EpochClock(None).epochs_that_fit(0, 5, info, cpu)


def test_fit_epochs_moves_the_schedule_config_and_provenance(cache, tmp_path, monkeypatch):
    config = tmp_path / "ten.json"
    config.write_text(json.dumps({"base": str(SMOKE), "training": {"epochs": 10, "val_every": 2, "lr": 0.003}}),
                      encoding="utf-8")
    monkeypatch.setattr(EpochClock, "epochs_that_fit", lambda self, done, val_every, info, device: 3)
    args = lambda out, *more: [*run_args(cache, out, "--iterations", "2", "--seed", "3", *more)[2:],  # noqa: E731
                               "--config", str(config)]
    a = tmp_path / "a"
    assert main(args(a, "--fit-epochs", "--max-minutes", "60")) == 0
    state = _state(a / "last.pt")
    assert state["epoch"] == 3 and state["config"]["training"]["epochs"] == 3
    assert json.loads((a / "config.json").read_text())["training"]["epochs"] == 3
    assert load_checkpoint(a / "best.pt").provenance["epochs"] == 3
    with (a / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    fitted, planned = TrainingRecipe.from_dict(state["config"]["training"]), TrainingRecipe(
        lr=0.003, epochs=10, iterations_per_epoch=2)
    # the last step (iteration 5) ran at the fitted schedule's end, far below where 10 epochs would have put it
    assert float(rows[-1]["lr"]) == pytest.approx(0.003 * lr_factor(fitted, 5), rel=1e-6)
    assert float(rows[-1]["lr"]) < 0.1 * 0.003 * lr_factor(planned, 5)
    assert float(rows[-1]["val_dice_mean"]) >= 0  # the last (fitted) epoch was validated though 3 % 2 != 0

    # stopped after its first fitted epoch (the second: the first gives the fit its times), resumed without
    # --fit-epochs: the saved state keeps the fit
    b = tmp_path / "b"
    assert main(args(b, "--fit-epochs", "--max-minutes", "60", "--stop-after", "2")) == 0
    assert _state(b / "last.pt")["config"]["training"]["epochs"] == 3
    assert main(args(b, "--resume")) == 0
    assert _state(b / "last.pt")["epoch"] == 3


def test_fit_epochs_needs_a_time_limit_and_no_fixed_epochs(cache, tmp_path):
    with pytest.raises(SystemExit):
        main(run_args(cache, tmp_path / "x", "--fit-epochs"))
    with pytest.raises(SystemExit):
        main(run_args(cache, tmp_path / "y", "--fit-epochs", "--max-minutes", "5", "--epochs", "4"))
