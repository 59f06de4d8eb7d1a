"""training.reproduce --stage1-from: a trained stage 1 (a released model's stage1.pt) instead of training one,
so only stage 2 is cached and trained, and the release ships that file's network. Training is replaced by a
recorder, so the commands are checked exactly."""
import json
import shutil
from types import SimpleNamespace

import pytest

from training import export, reproduce
from training.reproduce import Runner, StepError
from training.reproduce_checks import check_configs
from training.stage_config import CONFIG_DIR
from reproduce_fakes import recording_trainer


def _args(stage1, **more):
    return SimpleNamespace(fold=0, device="cpu", jobs=1, train_minutes=None, fit_epochs=False,
                           stage2_finetune_config=None, stage2_seeds=[0, 1], stage1_from=stage1, **more)


def test_only_stage2_trains_and_the_given_stage1_file_is_shipped(tmp_path, monkeypatch, model_dir):
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    configs = {2: CONFIG_DIR / "stage2_v2.json"}  # no stage-1 config: none was read or cached
    for jobs in (1, 2):
        shutil.rmtree(tmp_path / "steps", ignore_errors=True)
        commands.clear()
        args = SimpleNamespace(**{**vars(_args(model_dir / "stage1.pt")), "jobs": jobs})
        best = reproduce._train_steps(args, Runner(tmp_path), tmp_path, configs, tmp_path / "splits.json", 8)
        runs = tmp_path / "runs"
        assert best == [(model_dir / "stage1.pt").resolve(), runs / "stage2" / "best.pt",
                        runs / "stage2_seed1" / "best.pt"]
        # with --jobs 2 the two seeds train side by side (decision 117), so the order is the threads'
        assert sorted(c[c.index("--out") + 1] for c in commands) == [str(runs / "stage2"), str(runs / "stage2_seed1")]
        assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["train2.json", "train2_seed1.json"]
    # a time limit is shared by the two stage-2 runs alone (no stage-1 slot)
    shutil.rmtree(tmp_path / "steps")
    commands.clear()
    reproduce._train_steps(SimpleNamespace(**{**vars(_args(model_dir / "stage1.pt")), "train_minutes": 30.0}),
                           Runner(tmp_path), tmp_path, configs, tmp_path / "splits.json", 8)
    assert [c[c.index("--max-minutes") + 1] for c in commands] == ["15", "15"]


def test_no_stage1_cache_is_made(tmp_path, monkeypatch, model_dir):
    commands = []
    monkeypatch.setattr(Runner, "run", lambda self, cmd, tag="", threads=None: commands.append([str(c) for c in cmd]))
    args = SimpleNamespace(quick=False, stage1_config="stage1_v2", stage2_config="stage2_v2", jobs=2,
                           stage1_from=model_dir / "stage1.pt")
    configs, caches = reproduce._preprocess_steps(args, Runner(tmp_path), tmp_path, tmp_path / "d",
                                                  tmp_path / "splits.json")
    assert list(configs) == [2] and caches == {2: tmp_path / "cache" / "stage2"}
    assert len(commands) == 1 and commands[0][commands[0].index("--stage") + 1] == "2"
    assert not (tmp_path / "steps" / "preprocess1.json").exists()


def _check_args(tmp_path, stage1):
    return SimpleNamespace(quick=False, synthetic=None, anatomy=None, download_kits23=False, data=tmp_path,
                           stage1_config="stage1_default", stage2_config="stage2_v2", stage2_finetune_config=None,
                           stage2_seeds=None, stage1_from=stage1)


def test_a_file_that_is_not_a_trained_stage1_is_refused_before_any_step(tmp_path, model_dir):
    check_configs(_check_args(tmp_path, model_dir / "stage1.pt"))  # a stage-1 checkpoint passes
    (tmp_path / "notes.pt").write_bytes(b"not a checkpoint")
    for given, message in [(tmp_path / "missing.pt", "no such file"),
                           (model_dir / "stage2.pt", "no tumor or cyst .is it a stage-2 file"),
                           (tmp_path / "notes.pt", "--stage1-from .*notes.pt")]:
        with pytest.raises(StepError, match=message):
            check_configs(_check_args(tmp_path, given))


def test_stage1_config_and_stage1_from_are_one_or_the_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["--data", str(tmp_path), "--work", str(tmp_path / "w"), "--stage1-config", "stage1_v2",
                        "--stage1-from", str(tmp_path / "s1.pt")])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_the_release_provenance_names_the_stage1_file_not_trained_here(tmp_path, monkeypatch, model_dir):
    """The whole chain on two cases with every step replaced: the export command says where stage 1 came from."""
    commands = []

    def fake_run(self, cmd, tag="", threads=None):
        cmd = [str(c) for c in cmd]
        commands.append(cmd)
        if "--out" in cmd:
            out = tmp_path / cmd[cmd.index("--out") + 1]
            out.mkdir(parents=True, exist_ok=True)
            (out / "best.pt").write_bytes(out.name.encode())
    monkeypatch.setattr(Runner, "run", fake_run)
    monkeypatch.setattr(reproduce, "predict", lambda *a, **k: None)
    monkeypatch.setattr(export, "export_model", lambda *a, **k: None)
    for c in ("case_00001", "case_00002", "case_00003"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for f in ("imaging.nii.gz", "segmentation.nii.gz"):
            (tmp_path / "d" / c / f).write_bytes(b"")
    assert reproduce.main(["--data", str(tmp_path / "d"), "--work", str(tmp_path / "w"), "--folds", "3",
                           "--stage2-config", "stage2_v2", "--stage1-from", str(model_dir / "stage1.pt")]) == 0
    assert not any("--stage" in c and c[c.index("--stage") + 1] == "1" for c in commands)
    exported = commands[-1]
    assert exported[exported.index("--stage1") + 1] == str((model_dir / "stage1.pt").resolve())
    provenance = exported[exported.index("--data-provenance") + 1]
    digest = export.sha256_file(model_dir / "stage1.pt")
    assert f"; stage 1 not trained here: stage1.pt (SHA-256 {digest}); fold 0 of 3" in provenance
    stamp = json.loads((tmp_path / "w" / "steps" / "predict.json").read_text(encoding="utf-8"))
    assert digest in json.dumps(stamp)
