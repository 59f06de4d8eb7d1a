"""training.reproduce --stage2-seeds: the main stage 2 trained once per seed, shipped as one ensemble file
(decisions 75 and 80). Training and export are replaced by recorders, so the commands are checked exactly."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from training import export, reproduce
from training.reproduce import Runner, StepError
from training.reproduce_checks import check_configs
from training.stage_config import CONFIG_DIR
from reproduce_fakes import recording_trainer


def test_each_further_seed_trains_the_main_stage2_in_a_run_of_its_own(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    args = SimpleNamespace(fold=0, device="cpu", jobs=1, train_minutes=None, fit_epochs=False,
                           stage2_finetune_config=None, stage2_seeds=[0, 1])
    configs = {s: CONFIG_DIR / f"stage{s}_v2.json" for s in (1, 2)}
    best = reproduce._train_steps(args, Runner(tmp_path), tmp_path, configs, tmp_path / "splits.json", 8)
    runs = tmp_path / "runs"
    assert best == [runs / "stage1" / "best.pt", runs / "stage2" / "best.pt", runs / "stage2_seed1" / "best.pt"]
    seeds = [c[c.index("--seed") + 1] if "--seed" in c else None for c in commands]
    assert seeds == [None, None, "1"]  # seed 0 is the trainer's default: a single run's command, unchanged
    assert [c[c.index("--config") + 1] for c in commands[1:]] == [str(configs[2])] * 2
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["train1.json", "train2.json",
                                                                       "train2_seed1.json"]
    # a time limit is shared by the three runs one after the other
    for p in (tmp_path / "steps").iterdir():
        p.unlink()
    commands.clear()
    reproduce._train_steps(SimpleNamespace(**{**vars(args), "train_minutes": 30.0}), Runner(tmp_path), tmp_path,
                           configs, tmp_path / "splits.json", 8)
    assert [c[c.index("--max-minutes") + 1] for c in commands] == ["10"] * 3


def test_without_seeds_the_runs_and_their_stamps_are_a_single_runs(tmp_path, monkeypatch):
    """Work folders made before --stage2-seeds existed stay valid: same run folders, same step settings."""
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    args = SimpleNamespace(fold=0, device="cpu", jobs=1, train_minutes=None, fit_epochs=False,
                           stage2_finetune_config=None)
    configs = {s: CONFIG_DIR / f"stage{s}_v2.json" for s in (1, 2)}
    best = reproduce._train_steps(args, Runner(tmp_path), tmp_path, configs, tmp_path / "splits.json", 8)
    assert best == [tmp_path / "runs" / f"stage{s}" / "best.pt" for s in (1, 2)]
    assert not any("--seed" in c for c in commands)
    stamp = (tmp_path / "steps" / "train2.json").read_text(encoding="utf-8")
    assert '"seed"' not in stamp and '"folds": 8' in stamp


@pytest.mark.parametrize("seeds, finetunes, message", [
    ([0, 0], None, "give distinct seeds"),
    ([0, -1], None, "give distinct seeds"),
    ([0, 1], ["stage2_v2_ft"], "would continue only one of them"),
])
def test_seeds_that_cannot_make_one_ensemble_are_refused_before_any_step(tmp_path, seeds, finetunes, message):
    args = SimpleNamespace(quick=False, synthetic=None, anatomy=None, download_kits23=False, data=tmp_path,
                           stage1_config="stage1_v2", stage2_config="stage2_v2", stage2_finetune_config=finetunes,
                           stage2_seeds=seeds)
    with pytest.raises(StepError, match=message):
        check_configs(args)


def test_the_release_of_several_seeds_is_one_ensemble_of_their_best_weights(tmp_path, monkeypatch):
    exported = []
    monkeypatch.setattr(reproduce, "predict", lambda *a, **k: None)
    monkeypatch.setattr(export, "export_model", lambda *a, **k: exported.append(a))
    monkeypatch.setattr(export, "sha256_file", lambda p: p.name)
    for c in ("case_00001", "case_00002"):
        (tmp_path / "main" / c).mkdir(parents=True)
        for f in ("imaging.nii.gz", "segmentation.nii.gz"):
            (tmp_path / "main" / c / f).write_bytes(b"")
    args = SimpleNamespace(quick=False, stage2_config="stage2_v2", stage2_finetune_config=None, device="cpu")
    best = [Path("s1.pt"), Path("seed0.pt"), Path("seed1.pt")]
    stamp, _ = reproduce._predict_step(args, Runner(tmp_path / "w"), tmp_path / "w", tmp_path / "main", best,
                                       ["case_00002"], "m")
    assert stamp["best"] == ["s1.pt", "seed0.pt", "seed1.pt"]
    assert exported[0][:2] == (Path("s1.pt"), [Path("seed0.pt"), Path("seed1.pt")])  # one ensemble, both seeds
    reproduce._predict_step(args, Runner(tmp_path / "w2"), tmp_path / "w2", tmp_path / "main", best[:2],
                            ["case_00002"], "m")
    assert exported[1][:2] == (Path("s1.pt"), Path("seed0.pt"))  # a single network stays a single file
