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
from training.stage_config import CONFIG_DIR
from training.state import load_initial_weights
from training.train_options import parse_args
from reproduce_fakes import recording_trainer

LABELS = ["background", "kidney", "tumor", "cyst"]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, model_dir):
    """(a released stage2.pt averaging two tiny networks, those two networks, one of them alone as best.pt)."""
    folder = tmp_path_factory.mktemp("ensemble")
    nets, files = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(build_network("improved_vnet", TINY))
        files.append(folder / f"seed{seed}.pt")
        save_checkpoint(files[-1], "improved_vnet", TINY, nets[-1], LABELS,
                        PreprocessingConfig(target_spacing=(5.0,) * 3), patch_size=(32, 32, 32))
    export_model(model_dir / "stage1.pt", files, "ens", folder / "release")
    return folder / "release" / "ens" / "stage2.pt", nets, files[0]


def test_init_member_starts_from_exactly_that_network(ensemble):
    path, nets, single = ensemble
    first, second = (n.state_dict() for n in nets)
    assert not all(torch.equal(first[n], second[n]) for n in first)  # so the member loaded is told apart
    for k, want in enumerate(nets):
        net = build_network("improved_vnet", TINY)
        load_initial_weights(path, net, LABELS, member=k)
        got, ref = net.state_dict(), want.state_dict()
        assert all(torch.equal(got[n], ref[n]) for n in ref)
    for member, message in [(None, "ensemble of 2 networks; pass --init-member 0 to 1"), (2, r"\(not 2\)")]:
        with pytest.raises(SystemExit, match=message):
            load_initial_weights(path, build_network("improved_vnet", TINY), LABELS, member=member)
    with pytest.raises(SystemExit, match="one network, not an ensemble"):
        load_initial_weights(single, build_network("improved_vnet", TINY), LABELS, member=0)


def test_init_member_needs_init(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--config", "smoke", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--init-member", "1"])


def _args(model_dir, init, **more):
    base = dict(fold=0, device="cpu", jobs=2, train_minutes=30.0, fit_epochs=False, stage2_finetune_config=None,
                stage2_seeds=[0, 1], stage1_from=model_dir / "stage1.pt", stage2_init=init)
    return SimpleNamespace(**{**base, **more})


def _option(cmd, flag):
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_each_seed_starts_from_its_network_side_by_side(tmp_path, monkeypatch, model_dir, ensemble):
    path = ensemble[0]
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    configs = {2: CONFIG_DIR / "stage2_gpu_ft.json"}
    runs = tmp_path / "runs"
    for jobs, minutes in ((2, "30"), (1, "15")):  # side by side the two seeds share one slot of the time
        shutil.rmtree(tmp_path / "steps", ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)
        commands.clear()
        best = reproduce._train_steps(_args(model_dir, path, jobs=jobs), Runner(tmp_path), tmp_path, configs,
                                      tmp_path / "splits.json", 8)
        assert best == [(model_dir / "stage1.pt").resolve(), runs / "stage2" / "best.pt",
                        runs / "stage2_seed1" / "best.pt"]
        by_run = {_option(c, "--out"): c for c in commands}
        assert sorted(by_run) == [str(runs / "stage2"), str(runs / "stage2_seed1")]
        for k, run in enumerate(("stage2", "stage2_seed1")):
            cmd = by_run[str(runs / run)]
            assert (_option(cmd, "--init"), _option(cmd, "--init-member")) == (str(path.resolve()), str(k))
            assert _option(cmd, "--max-minutes") == minutes
    stamp = (tmp_path / "steps" / "train2_seed1.json").read_text(encoding="utf-8")
    assert f"{sha256_file(path)}[1]" in stamp  # another file or member is another step
    # an interrupted run resumes from its own state, not from the shipped weights again
    (tmp_path / "steps" / "train2_seed1.json").unlink()
    commands.clear()
    reproduce._train_steps(_args(model_dir, path, jobs=1), Runner(tmp_path), tmp_path, configs,
                           tmp_path / "splits.json", 8)
    assert len(commands) == 1 and "--resume" in commands[0] and "--init" not in commands[0]


def test_a_single_network_starts_every_seed(tmp_path, monkeypatch, model_dir, ensemble):
    single = ensemble[2]
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    reproduce._train_steps(_args(model_dir, single), Runner(tmp_path), tmp_path,
                           {2: CONFIG_DIR / "stage2_gpu_ft.json"}, tmp_path / "splits.json", 8)
    assert [_option(c, "--init") for c in commands] == [str(single.resolve())] * 2
    assert not any("--init-member" in c for c in commands)


@pytest.mark.parametrize("seeds, quick, message", [
    ([0], False, "ensemble of 2 networks: give as many --stage2-seeds"),
    ([0, 1, 2], False, "ensemble of 2 networks: give as many --stage2-seeds"),
    ([0, 1], True, "--quick trains the tiny smoke networks"),
])
def test_a_stage2_init_that_cannot_start_the_seeds_is_refused_before_any_step(tmp_path, model_dir, ensemble,
                                                                            seeds, quick, message):
    args = SimpleNamespace(quick=quick, synthetic=None, anatomy=None, download_kits23=False, data=tmp_path,
                           stage1_config=None, stage1_from=model_dir / "stage1.pt", stage2_config="stage2_gpu_ft",
                           stage2_finetune_config=None, stage2_seeds=seeds, stage2_init=ensemble[0])
    with pytest.raises(StepError, match=message):
        check_configs(args)
    args.quick, args.stage2_seeds, args.stage2_init = False, [0, 1], tmp_path / "none.pt"
    with pytest.raises(StepError, match="no such file"):
        check_configs(args)
