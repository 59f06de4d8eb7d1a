"""One checkpoint file restores the exact network, labels, preprocessing and patch size; bad files fail clearly."""
import os
from pathlib import Path

import pytest
import torch

from KidneyTumorSegLib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from KidneyTumorSegLib.networks import STAGE1_TINY, TINY, build_network
from KidneyTumorSegLib.preprocessing import PreprocessingConfig

LABELS = ["background", "kidney", "tumor", "cyst"]
PREP = PreprocessingConfig(target_spacing=(0.8, 0.8, 1.0), normalization="window")


def _save(path, name="improved_vnet", config=TINY, labels=LABELS, **kw):
    torch.manual_seed(0)
    model = build_network(name, config)
    save_checkpoint(path, name, config, model, labels, PREP, patch_size=(32, 48, 48),
                    provenance={"data": "synthetic"}, metrics={"kidney_dice": 0.9}, **kw)
    return model


def test_round_trip_restores_the_same_function(tmp_path):
    path = tmp_path / "m.pt"
    model = _save(path).eval()
    ckpt = load_checkpoint(path)
    assert ckpt.config == TINY and ckpt.labels == LABELS and ckpt.preprocessing == PREP
    assert ckpt.patch_size == (32, 48, 48)
    assert ckpt.provenance["data"] == "synthetic" and "torch_version" in ckpt.provenance
    assert ckpt.metrics == {"kidney_dice": 0.9}
    assert not ckpt.model.training
    x = torch.randn(1, 1, 17, 20, 23)
    with torch.no_grad():
        assert torch.equal(model(x), ckpt.model(x))


def test_loads_with_weights_only(tmp_path):
    path = tmp_path / "m.pt"
    _save(path, "residual_unet", STAGE1_TINY, ["background", "kidney"])
    payload = torch.load(path, weights_only=True)  # raises if anything but plain data was pickled
    assert payload["network"]["name"] == "residual_unet"


def test_refuses_to_overwrite_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        _save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


def test_label_count_must_match_outputs(tmp_path):
    with pytest.raises(ValueError, match="label names"):
        _save(tmp_path / "m.pt", labels=["background", "kidney"])


def test_truncated_file(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a KidneyTumorSeg checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def _tamper(path, edit):
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


def test_mismatched_weights_are_named(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    _tamper(path, lambda p: p["network"]["config"].update(base_channels=8))
    with pytest.raises(CheckpointError, match="does not match its network configuration: .*wrong shape"):
        load_checkpoint(path)


def test_newer_format_and_bad_config(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    _tamper(path, lambda p: p.update(format_version=99))
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)
    _save(path, overwrite=True)
    _tamper(path, lambda p: p["preprocessing"].update(normalization="magic"))
    with pytest.raises(CheckpointError, match="invalid configuration"):
        load_checkpoint(path)


def test_non_plain_provenance_is_refused_before_publishing(tmp_path):
    model = build_network("improved_vnet", TINY)
    with pytest.raises(ValueError, match="not plain data"):
        save_checkpoint(tmp_path / "m.pt", "improved_vnet", TINY, model, LABELS, PREP, (8, 8, 8),
                        provenance={"data_dir": Path("/data")})  # a Path pickles as a class
    assert os.listdir(tmp_path) == []
