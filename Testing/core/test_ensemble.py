"""An ensemble of one network's trainings: averaged probabilities, one checkpoint file, one exported stage 2."""
import json

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.checkpoint import (CheckpointError, ensemble_of, format_version_of, load_checkpoint,
                                          save_checkpoint)
from KidneyTumorSegLib.inference import sliding_window_inference
from KidneyTumorSegLib.networks import SMALL, STAGE1_TINY, TINY, Ensemble, build_network
from KidneyTumorSegLib.preprocessing import PreprocessingConfig
from training import export, state

LABELS = ["background", "kidney", "tumor", "cyst"]
PREP = PreprocessingConfig(target_spacing=(2.0, 2.0, 2.0), normalization="window")


def _save(path, seed, labels=LABELS, prep=PREP, patch=(32, 32, 32), config=TINY):
    torch.manual_seed(seed)
    model = build_network("improved_vnet", config)
    save_checkpoint(path, "improved_vnet", config, model, labels, prep, patch, provenance={"run": f"seed{seed}"},
                    metrics={"best_val_dice": seed / 10})
    return path


def _mean_softmax(models, x):
    with torch.no_grad():
        return sum(torch.softmax(m.eval()(x), dim=1) for m in models) / len(models)


def test_the_ensemble_gives_the_mean_of_its_members_probabilities():
    torch.manual_seed(0)
    members = [build_network("improved_vnet", TINY) for _ in range(3)]
    ens = Ensemble(members).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        p = torch.softmax(ens(x), dim=1)
        single = torch.softmax(members[0](x), dim=1)
    assert torch.allclose(p, _mean_softmax(members, x), atol=1e-6)
    assert not torch.allclose(p, single, atol=1e-3)  # the members differ: the average is not one of them


def test_through_the_sliding_window_the_ensemble_is_the_average_of_its_members_windows():
    # One window covers the volume: the ensemble's output must be exactly the members' mean probabilities.
    torch.manual_seed(1)
    members = [build_network("improved_vnet", TINY) for _ in range(2)]
    x = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    got = sliding_window_inference(x, Ensemble(members), (16, 16, 16), device="cpu")
    want = _mean_softmax(members, torch.from_numpy(x)[None, None])[0].numpy()
    assert np.allclose(got, want, atol=1e-5)


def test_an_ensemble_needs_two_members_and_refuses_training_mode():
    net = build_network("improved_vnet", TINY)
    with pytest.raises(ValueError, match="at least two"):
        Ensemble([net])
    ens = Ensemble([net, build_network("improved_vnet", TINY)])  # a new module is in training mode
    with pytest.raises(RuntimeError, match="inference"):
        ens(torch.randn(1, 1, 16, 16, 16))


def test_an_ensemble_file_round_trips_and_says_its_version(tmp_path):
    ckpts = [load_checkpoint(_save(tmp_path / f"m{i}.pt", i)) for i in range(2)]
    ens = ensemble_of(ckpts)
    assert ens.provenance["members"][1]["run"] == "seed1" and ens.metrics["members"][0]["best_val_dice"] == 0.0
    path = save_checkpoint(tmp_path / "ens.pt", ens.network_name, ens.config, ens.model, ens.labels,
                           ens.preprocessing, ens.patch_size, ens.provenance, ens.metrics)
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 2 and "state_dict" not in payload and len(payload["members"]) == 2
    assert torch.load(tmp_path / "m0.pt", weights_only=True)["format_version"] == 1  # singles stay readable
    back = load_checkpoint(path)
    assert isinstance(back.model, Ensemble) and not back.model.training and format_version_of(back.model) == 2
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(back.model(x), ens.model(x))


def test_a_damaged_ensemble_file_is_refused_by_name(tmp_path):
    ckpts = [load_checkpoint(_save(tmp_path / f"m{i}.pt", i)) for i in range(2)]
    ens = ensemble_of(ckpts)
    path = save_checkpoint(tmp_path / "ens.pt", ens.network_name, ens.config, ens.model, ens.labels,
                           ens.preprocessing, ens.patch_size)
    payload = torch.load(path, weights_only=True)
    payload["members"] = payload["members"][:1]
    torch.save(payload, tmp_path / "one.pt")
    with pytest.raises(CheckpointError, match="fewer than two"):
        load_checkpoint(tmp_path / "one.pt")
    payload["members"] = [payload["members"][0], {k: v for k, v in list(payload["members"][0].items())[1:]}]
    torch.save(payload, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="network 2 of the ensemble.*1 missing"):
        load_checkpoint(tmp_path / "cut.pt")


def test_an_ensemble_is_not_a_member(tmp_path):
    ckpts = [load_checkpoint(_save(tmp_path / f"m{i}.pt", i)) for i in range(2)]
    with pytest.raises(ValueError, match="checkpoint 1 is an ensemble already"):
        ensemble_of([ensemble_of(ckpts), ckpts[0]])


@pytest.mark.parametrize("change, what", [
    (dict(config=SMALL), "network config"),
    (dict(labels=["background", "kidney", "tumor", "aux_liver"]), "labels"),
    (dict(prep=PreprocessingConfig(target_spacing=(1.0, 1.0, 1.0), normalization="window")), "preprocessing"),
    (dict(patch=(32, 32, 48)), "patch size"),
])
def test_members_must_be_trainings_of_one_network_on_one_input(tmp_path, change, what):
    a = load_checkpoint(_save(tmp_path / "a.pt", 0))
    b = load_checkpoint(_save(tmp_path / "b.pt", 1, **change))
    with pytest.raises(ValueError, match=what):
        ensemble_of([a, b])


def test_export_writes_several_stage2_files_as_one_ensemble(tmp_path):
    torch.manual_seed(0)
    s1 = save_checkpoint(tmp_path / "s1.pt", "residual_unet", STAGE1_TINY, build_network("residual_unet", STAGE1_TINY),
                         ["background", "kidney"], PreprocessingConfig(target_spacing=(4.0, 4.0, 4.0),
                                                                       normalization="window"), (32, 32, 32))
    members = [_save(tmp_path / f"m{i}.pt", i) for i in range(2)]
    rc = export.main(["--stage1", str(s1), "--stage2", *map(str, members), "--name", "ens", "-o",
                      str(tmp_path / "out")])
    assert rc == 0
    entry = json.loads((tmp_path / "out" / "ens" / "models_entry.json").read_text())["ens"]
    assert entry["stage2"]["members"] == 2 and "members" not in entry["stage1"]
    assert entry["checkpoint_format_version"] == 2 and "ensemble of 2" in entry["description"]
    one = load_checkpoint(members[0])
    assert entry["stage2"]["parameters"] == 2 * sum(p.numel() for p in one.model.parameters())
    got = load_checkpoint(tmp_path / "out" / "ens" / "stage2.pt")
    assert len(got.provenance["source_sha256s"]) == 2 and got.provenance["source_files"] == [f"{tmp_path.name}/m{i}.pt"
                                                                                             for i in range(2)]
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        want = _mean_softmax([load_checkpoint(m).model for m in members], x)
        assert torch.allclose(torch.softmax(got.model(x), dim=1), want, atol=1e-6)
    bad = _save(tmp_path / "bad.pt", 2, patch=(32, 32, 48))
    for second in (bad, members[0]):  # another input; the same network twice
        assert export.main(["--stage1", str(s1), "--stage2", str(members[0]), str(second), "--name", "bad", "-o",
                            str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out" / "bad").exists()


def test_training_does_not_start_from_an_ensemble_file(tmp_path):
    ens = ensemble_of([load_checkpoint(_save(tmp_path / f"m{i}.pt", i)) for i in range(2)])
    path = save_checkpoint(tmp_path / "ens.pt", ens.network_name, ens.config, ens.model, ens.labels,
                           ens.preprocessing, ens.patch_size)
    with pytest.raises(SystemExit, match="ensemble of 2 networks"):
        state.load_initial_weights(path, build_network("improved_vnet", TINY), LABELS)
