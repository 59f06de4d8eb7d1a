"""training.weight_average (decision 88): the weights' moving average is what validation judges and best.pt holds,
and it resumes bit for bit. Uses test_train.py's tiny cache and run helpers."""
import json

import pytest
import torch

from KidneyTumorSegLib.checkpoint import load_checkpoint
from training.recipe import TrainingRecipe
from training.train import main
from test_train import SMOKE, _state, cache, one_thread, run_args  # noqa: F401 (fixtures)


def test_weight_average_is_what_is_validated_and_exported_and_resumes_exactly(cache, tmp_path):
    config = tmp_path / "averaged.json"
    config.write_text(json.dumps({"base": str(SMOKE), "training": {"weight_average": 0.5}}), encoding="utf-8")
    common = ("--epochs", "4", "--iterations", "2", "--val-every", "4", "--seed", "3")
    args = lambda out, *more: [*run_args(cache, out, *common, *more)[2:], "--config", str(config)]  # noqa: E731
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(args(a)) == 0
    assert main(args(b, "--stop-after", "2")) == 0
    assert main(args(b, "--resume")) == 0
    sa, sb = _state(a / "last.pt"), _state(b / "last.pt")
    assert sa["config"]["training"]["weight_average"] == 0.5
    average = {k[len("module."):]: v for k, v in sa["weight_average"].items() if k.startswith("module.")}
    assert sa["weight_average"]["n_averaged"] == 8  # one update per step
    for k, v in sa["weight_average"].items():
        assert torch.equal(v, sb["weight_average"][k]), k  # resumed bit for bit
    best = load_checkpoint(a / "best.pt").model.state_dict()
    # best.pt (the only validation, epoch 4) holds the average, which differs from the last step's weights
    assert best.keys() == average.keys()
    assert all(torch.equal(best[k], average[k]) for k in best)
    assert any(not torch.equal(average[k], sa["model"][k]) for k in average)
    with pytest.raises(ValueError, match="weight_average"):
        TrainingRecipe(weight_average=1.0)
