"""Fine-tuning a shipped model (decision 117): train --init-member starts from one network of an exported
ensemble, and training.reproduce --stage2-init gives the k-th network to the k-th --stage2-seeds seed, the
seeds side by side with --jobs 2 when stage 1 is given. Training is replaced by a recorder, so the commands
are checked exactly."""
import shutil
from types import SimpleNamespace

import pytest
import torch

from KidneyTumorSegLib.checkpoint import save_checkpoint
from KidneyTumorSegLib.networks import TINY, build_network
from KidneyTumorSegLib.preprocessing import PreprocessingConfig
from training import reproduce
from training.export import export_model, sha256_file
from training.reproduce import Runner, StepError
from training.reproduce_checks import check_configs
from training.stage_config import CONFIG_DIR, config_path, load_stage_config
from training.state import load_initial_weights
from training.train_options import parse_args
from reproduce_fakes import recording_trainer

SMOKE = load_stage_config(config_path("smoke"))  # the stage-2 config the fine-tunes below continue
LABELS = list(SMOKE.labels)
CONFIGS = {2: CONFIG_DIR / "smoke.json"}


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, model_dir):
    """(a released stage2.pt averaging two networks of the smoke config, those two, one of them alone as best.pt)."""
    folder = tmp_path_factory.mktemp("ensemble")
    nets, files = [], []
    for seed in (1, 2):
        nets.append(SMOKE.build(seed))
        files.append(folder / f"seed{seed}.pt")
        save_checkpoint(files[-1], SMOKE.network_name, SMOKE.network, nets[-1], LABELS, SMOKE.preprocessing,
                        patch_size=SMOKE.patch_size)
    export_model(model_dir / "stage1.pt", files, "ens", folder / "release")
    return folder / "release" / "ens" / "stage2.pt", nets, files[0]


def fresh():
    return SMOKE.build(0)


def test_init_member_starts_from_exactly_that_network(ensemble):
    path, nets, single = ensemble
    first, second = (n.state_dict() for n in nets)
    assert not all(torch.equal(first[n], second[n]) for n in first)  # so the member loaded is told apart
    for k, want in enumerate(nets):
        net = fresh()
        load_initial_weights(path, net, LABELS, member=k)
        got, ref = net.state_dict(), want.state_dict()
        assert all(torch.equal(got[n], ref[n]) for n in ref)
    for member, message in [(None, "ensemble of 2 networks; pass --init-member 0 to 1"), (2, r"\(not 2\)")]:
        with pytest.raises(SystemExit, match=message):
            load_initial_weights(path, fresh(), LABELS, member=member)
    with pytest.raises(SystemExit, match="one network, not an ensemble"):
        load_initial_weights(single, fresh(), LABELS, member=0)


def test_init_member_needs_init(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--config", "smoke", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--init-member", "1"])


def _args(model_dir, init, **more):
    base = dict(fold=0, device="cpu", jobs=2, train_minutes=30.0, fit_epochs=False, stage2_finetune_config=None,
                stage2_seeds=[3, 7], stage1_from=model_dir / "stage1.pt", stage2_init=init, stage2_config="smoke")
    return SimpleNamespace(**{**base, **more})


def _option(cmd, flag):
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_each_seed_starts_from_its_network_side_by_side(tmp_path, monkeypatch, model_dir, ensemble):
    path = ensemble[0]
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    runs = tmp_path / "runs"
    for jobs, minutes in ((2, "30"), (1, "15")):  # side by side the two seeds share one slot of the time
        shutil.rmtree(tmp_path / "steps", ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)
        commands.clear()
        best = reproduce._train_steps(_args(model_dir, path, jobs=jobs), Runner(tmp_path), tmp_path, CONFIGS,
                                      tmp_path / "splits.json", 8)
        assert best == [(model_dir / "stage1.pt").resolve(), runs / "stage2_seed3" / "best.pt",
                        runs / "stage2_seed7" / "best.pt"]
        by_run = {_option(c, "--out"): c for c in commands}
        assert sorted(by_run) == [str(runs / "stage2_seed3"), str(runs / "stage2_seed7")]
        for k, run in enumerate(("stage2_seed3", "stage2_seed7")):  # the k-th seed, not seed k
            cmd = by_run[str(runs / run)]
            assert (_option(cmd, "--init"), _option(cmd, "--init-member")) == (str(path.resolve()), str(k))
            assert _option(cmd, "--max-minutes") == minutes
    for k, run in enumerate(("seed3", "seed7")):  # another file or network is another step
        assert f"{sha256_file(path)}[{k}]" in (tmp_path / "steps" / f"train2_{run}.json").read_text(encoding="utf-8")
    # an interrupted run resumes from its own state, not from the shipped weights again
    (tmp_path / "steps" / "train2_seed7.json").unlink()
    commands.clear()
    reproduce._train_steps(_args(model_dir, path, jobs=1), Runner(tmp_path), tmp_path, CONFIGS,
                           tmp_path / "splits.json", 8)
    assert len(commands) == 1 and "--resume" in commands[0] and "--init" not in commands[0]


def _steps(tmp_path, model_dir, init, **more):
    return reproduce._train_steps(_args(model_dir, init, **more), Runner(tmp_path), tmp_path, CONFIGS,
                                  tmp_path / "splits.json", 8)


def test_a_run_cut_short_resumes_only_from_the_file_it_began_with(tmp_path, monkeypatch, model_dir, ensemble):
    """A resumed run drops --init (it continues its last.pt), so another --stage2-init would be stamped on a run
    that never started from it: refused before any command (also the seed that would run beside it, and a
    third seed after them), naming what changed and the way out."""
    path, single = ensemble[2], ensemble[2].with_name("seed2.pt")  # two single networks
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    _steps(tmp_path, model_dir, path, stage2_seeds=[3, 7, 9])
    for run in ("seed7", "seed9"):  # cut short: last.pt written, the steps not marked done
        (tmp_path / "steps" / f"train2_{run}.json").unlink()
    commands.clear()
    for jobs, seeds in ((1, [9]), (2, [5, 7]), (2, [5, 11, 9])):  # new seeds 5 and 11 would start first
        with pytest.raises(StepError, match=r"left unfinished that began with other settings: init \(\w+ -> \w+\)"
                                            r" \(.*reproduce_settings.json\).*delete that run folder"):
            _steps(tmp_path, model_dir, single, jobs=jobs, stage2_seeds=seeds)
        assert commands == [] and not (tmp_path / "runs" / "stage2_seed5").exists()  # checking writes nothing
    _steps(tmp_path, model_dir, path, stage2_seeds=[3, 7, 9])  # the same file: both resume
    assert len(commands) == 2 and all("--resume" in c and "--init" not in c for c in commands)
    shutil.rmtree(tmp_path / "runs" / "stage2_seed3")  # a run folder deleted starts afresh from the new file
    (tmp_path / "steps" / "train2_seed3.json").unlink()
    commands.clear()
    with pytest.raises(StepError, match="already ran"):  # seed 7 finished from the old file: its own refusal
        _steps(tmp_path, model_dir, single, jobs=1)
    assert commands == []


def test_a_resume_without_a_readable_record(tmp_path, monkeypatch, model_dir, ensemble, capsys):
    """A run left unfinished before the record existed resumes, said to be unchecked; a record that cannot be
    read stops reproduce with what to delete."""
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    _steps(tmp_path, model_dir, ensemble[0])
    record = tmp_path / "runs" / "stage2_seed3" / "reproduce_settings.json"
    (tmp_path / "steps" / "train2_seed3.json").unlink()
    record.write_text("{", encoding="utf-8")
    commands.clear()
    with pytest.raises(StepError, match="reproduce_settings.json cannot be read.*delete it"):
        _steps(tmp_path, model_dir, ensemble[0])
    assert commands == []
    record.unlink()
    warning = "stage2_seed3 resumes without a record of the settings it began with"
    assert warning not in capsys.readouterr().out  # not said of the runs that started afresh or were refused
    _steps(tmp_path, model_dir, ensemble[2], stage2_seeds=[3])  # another file, but nothing to tell it by
    assert len(commands) == 1 and "--resume" in commands[0]
    assert warning in capsys.readouterr().out


def test_a_single_network_starts_every_seed_and_a_third_seed_runs_after_the_pair(tmp_path, monkeypatch, model_dir,
                                                                               ensemble):
    single = ensemble[2]
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    best = reproduce._train_steps(_args(model_dir, single, stage2_seeds=[3, 7, 9]), Runner(tmp_path), tmp_path,
                                  CONFIGS, tmp_path / "splits.json", 8)
    runs = tmp_path / "runs"
    assert best[1:] == [runs / f"stage2_seed{s}" / "best.pt" for s in (3, 7, 9)]
    assert _option(commands[-1], "--out") == str(runs / "stage2_seed9")  # alone, after the pair
    assert [_option(c, "--init") for c in commands] == [str(single.resolve())] * 3
    assert not any("--init-member" in c for c in commands)
    assert [_option(c, "--max-minutes") for c in commands] == ["15"] * 3  # two slots: the pair, then the third


@pytest.mark.parametrize("seeds, quick, message", [
    ([0], False, "ensemble of 2 networks: give as many --stage2-seeds"),
    ([0, 1, 2], False, "ensemble of 2 networks: give as many --stage2-seeds"),
    ([0, 1], True, "--quick trains the tiny smoke networks"),
])
def test_a_stage2_init_that_cannot_start_the_seeds_is_refused_before_any_step(tmp_path, model_dir, ensemble,
                                                                            seeds, quick, message):
    args = SimpleNamespace(quick=quick, synthetic=None, anatomy=None, download_kits23=False, data=tmp_path,
                           stage1_config=None, stage1_from=model_dir / "stage1.pt", stage2_config="smoke",
                           stage2_finetune_config=None, stage2_seeds=seeds, stage2_init=ensemble[0])
    with pytest.raises(StepError, match=message):
        check_configs(args)
    args.quick, args.stage2_seeds, args.stage2_init = False, [0, 1], tmp_path / "none.pt"
    with pytest.raises(StepError, match="no such file"):
        check_configs(args)


def test_a_file_of_another_network_is_refused_before_any_step(tmp_path, model_dir, ensemble):
    other = tmp_path / "tiny.pt"  # the right outputs, another width
    save_checkpoint(other, "improved_vnet", TINY, build_network("improved_vnet", TINY), LABELS,
                    PreprocessingConfig(target_spacing=(5.0,) * 3), patch_size=(32, 32, 32))
    for wrong in (other, model_dir / "stage1.pt"):
        args = SimpleNamespace(quick=False, stage2_config="smoke", stage2_seeds=[0, 1], stage2_init=wrong)
        with pytest.raises(StepError, match="not the network and outputs of --stage2-config smoke"):
            reproduce.stage2_init_members(args)


def test_the_release_provenance_names_the_file_stage2_started_from(tmp_path, monkeypatch, model_dir, ensemble):
    """The whole chain on three cases with every step replaced: the export says what stage 2 was fine-tuned from."""
    commands = []
    fake = recording_trainer(tmp_path, commands)
    monkeypatch.setattr(Runner, "run", lambda self, cmd, tag="", threads=None: fake(self, cmd) if "--out" in
                        [str(c) for c in cmd] else commands.append([str(c) for c in cmd]))
    monkeypatch.setattr(reproduce, "predict", lambda *a, **k: None)
    monkeypatch.setattr(reproduce.export_mod, "export_model", lambda *a, **k: None)  # the recorded runs' files
    for c in ("case_00001", "case_00002", "case_00003"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for f in ("imaging.nii.gz", "segmentation.nii.gz"):
            (tmp_path / "d" / c / f).write_bytes(b"")
    assert reproduce.main(["--data", str(tmp_path / "d"), "--work", str(tmp_path / "w"), "--folds", "3",
                           "--stage2-config", "smoke", "--stage1-from", str(model_dir / "stage1.pt"),
                           "--stage2-init", str(ensemble[0]), "--stage2-seeds", "0", "1"]) == 0
    exported = commands[-1]
    provenance = exported[exported.index("--data-provenance") + 1]
    assert f"; stage 2 fine-tuned from stage2.pt (SHA-256 {sha256_file(ensemble[0])})" in provenance
