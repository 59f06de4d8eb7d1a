"""The training code writes through KidneyTumorSegLib.atomic: a write that fails half-way leaves the old
file (or none) and no temporary file."""
import os

import numpy as np
import pytest
import torch

from training import download, state
from training.datasets import cache, discover, make_splits, preprocess_dataset

from test_datasets import kits  # the tiny fake KiTS23 cases


def _half_write(path):
    with open(path, "wb") as f:
        f.write(b"partial")
    raise OSError("disk full")


def test_training_state_save(tmp_path, monkeypatch):
    state.atomic_torch_save({"a": torch.zeros(2)}, tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(state.torch, "save", lambda obj, f: _half_write(f))
    with pytest.raises(OSError, match="disk full"):
        state.atomic_torch_save({"a": torch.ones(2)}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == ["last.pt"] and (tmp_path / "last.pt").read_bytes() == before


def test_manifest_labels_and_splits(tmp_path, monkeypatch):
    src = tmp_path / "src" / "case_00003.nii.gz"
    src.parent.mkdir()
    src.write_bytes(b"labels")
    root = tmp_path / "root"
    monkeypatch.setattr(download.shutil, "copyfile", lambda a, b: _half_write(b))
    with pytest.raises(OSError, match="disk full"):
        download.copy_labels(src.parent, root, [3])
    assert os.listdir(root / "case_00003") == []
    monkeypatch.undo()
    assert download.copy_labels(src.parent, root, [3]) == 1
    assert (root / "case_00003" / "segmentation.nii.gz").read_bytes() == b"labels"
    download.write_manifest(root / "SHA256SUMS", {"b": "2" * 64, "a": "1" * 64})
    assert download.read_manifest(root / "SHA256SUMS") == {"a": "1" * 64, "b": "2" * 64}
    make_splits([f"c{i}" for i in range(4)], 2, path=root / "splits.json")
    assert sorted(os.listdir(root)) == ["SHA256SUMS", "case_00003", "splits.json"]


def test_cache_sample(tmp_path, monkeypatch):
    cases = discover(kits(tmp_path, "kits23", n=1))
    out = tmp_path / "s1"
    monkeypatch.setattr(cache.np, "savez", lambda f, **arrays: (f.write(b"partial"), _half_write(f.name)))
    with pytest.raises(OSError, match="disk full"):
        preprocess_dataset(cases, 1, None, out)
    assert os.listdir(out) == []  # no sample, no index, no temporary file
    monkeypatch.undo()
    preprocess_dataset(cases, 1, None, out)
    assert sorted(os.listdir(out)) == ["case_00000.npz", "index.json"]
    assert np.load(out / "case_00000.npz")["labels"].dtype == np.uint8
