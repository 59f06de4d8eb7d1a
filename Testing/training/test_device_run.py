"""The GPU recipe's scripts: device_pack archives the data and keeps it within its byte budget (smallest KiTS
maps first, cut to their kidneys without changing what the real-anatomy painter reads, held-out maps left out)
and re-packs a wheel so that tar installs it; device_run.sh parses and refuses unknown options."""
import gzip
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.image_io import read_labelmap
from training.device_pack import (ARCHIVE_SLACK, CARRY_LIMIT, crop_to_kidneys, default_budget, pack_data, pack_wheel,
                                  xz_share)
from training.synth_real import kits_kidneys

REPO = Path(__file__).resolve().parents[2]
SHARED_KITS = REPO.parent / "shared" / "data" / "kits23" / "labels"


def _file(path: Path, data: bytes) -> None:
    """A file as the shared data holds it: .gz written at the fastest level."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.name.endswith(".gz") else data)


KITS_DIRECTION = (0, 0, -1, 0, -1, 0, 1, 0, 0)  # KiTS's own: index x head-foot, index z left-right


def _kits_map(path: Path, shape_zyx, kidneys, seed=0, direction=KITS_DIRECTION) -> None:
    """A KiTS23-like label map: KiTS's axis order (index x runs head-foot, index z left-right) and random label
    values (1-3) in each (z, y, x) box of ``kidneys``, so that the boxes' contents do not compress away."""
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape_zyx, np.uint8)
    for box in kidneys:
        arr[box] = rng.integers(1, 4, arr[box].shape)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.5, 0.8, 0.7))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def _unpack(folder: Path, into: Path) -> Path:
    """device_run.sh's way: every archive of the packed folder extracted into one folder."""
    into.mkdir()
    for t in sorted(folder.glob("*.tar.xz")):
        subprocess.run(["tar", "-I", "xz -T0", "-xf", str(t), "-C", str(into)], check=True)
    return into


def test_pack_data_archives_the_files_and_the_smallest_label_maps_within_the_budget(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    zz, yy, xx = np.mgrid[:80, :80, :80]
    organs = sum(np.uint8(k) * ((zz - 10 * k) ** 2 + (yy - 40) ** 2 + (xx - 8 * k) ** 2 < 300) for k in range(1, 8))
    label = organs.astype(np.uint8).tobytes()  # round organs, like a label map
    _file(src / "anatomy" / "amos" / "amos_0013.nii.gz", label)
    _file(src / "anatomy" / "flare22" / "FLARE22_Tr_0042.nii.gz", label)
    _file(src / "anatomy" / "flare22" / "FLARE22_Tr_0043.nii.gz", label)  # held out: never carried
    _file(src / "real_ct" / "totalseg_s0009" / "ct.nii.gz", os.urandom(50))
    _file(src / "ct" / "example_ct.nii.gz", os.urandom(50))
    _file(src / "real_ct" / "ircadb_1.1" / "ct.nii.gz", os.urandom(10_000))  # not a small real CT
    labels = src / "kits23" / "labels"
    _kits_map(labels / "case_00000.nii.gz", (14, 14, 14), [np.s_[:, :, :]])  # small, all kidney: stays big
    _kits_map(labels / "case_00001.nii.gz", (60, 160, 160), [np.s_[20:30, 70:80, 30:40]])  # large, tiny kidney
    _kits_map(labels / "case_00002.nii.gz", (60, 160, 160), [np.s_[20:30, 70:80, 30:45]])
    sizes = {f.name: f.stat().st_size for f in labels.iterdir()}
    assert sizes["case_00000.nii.gz"] < sizes["case_00001.nii.gz"]  # the sources' order: case 0 first
    share = {f.name: xz_share(f, tmp_path / "share" / f.name) for f in labels.iterdir()}  # same name: gzip keeps it
    assert share["case_00001.nii.gz"] < min(share["case_00000.nii.gz"], share["case_00002.nii.gz"])
    fixed, n = pack_data(src, out, budget=0)  # only what is always carried
    assert n == 0 and sorted(p.name for p in out.iterdir()) == ["fixed.tar.xz"]
    assert fixed == (out / "fixed.tar.xz").stat().st_size
    budget = fixed + ARCHIVE_SLACK + share["case_00001.nii.gz"]
    used, n = pack_data(src, out, budget=budget)
    assert n == 1 and fixed < used <= budget  # case 0 tried first, did not fit, was skipped; case 2 does not fit
    assert used == sum(f.stat().st_size for f in out.iterdir())
    got = _unpack(out, tmp_path / "got")
    assert sorted(p.name for p in (got / "kits23" / "labels").iterdir()) == ["case_00001.nii.gz"]
    _same_kidneys(labels / "case_00001.nii.gz", got / "kits23" / "labels" / "case_00001.nii.gz")
    amos = got / "anatomy" / "amos" / "amos_0013.nii.gz"
    assert gzip.decompress(amos.read_bytes()) == label  # lossless, still a .gz the readers take
    assert fixed < len(gzip.compress(label, compresslevel=9))  # the whole archive: smaller than one map at gzip -9
    assert (got / "anatomy" / "flare22" / "FLARE22_Tr_0042.nii.gz").is_file()
    assert not (got / "anatomy" / "flare22" / "FLARE22_Tr_0043.nii.gz").exists()
    assert (got / "real_ct" / "totalseg_s0009" / "ct.nii.gz").is_file()
    assert (got / "ct" / "example_ct.nii.gz").is_file()  # the example CT, not only its kidney masks
    assert not (got / "real_ct" / "ircadb_1.1").exists()
    assert pack_data(src, tmp_path / "again", budget=budget) == (used, 1)
    assert (tmp_path / "again" / "kits23.tar.xz").read_bytes() == (out / "kits23.tar.xz").read_bytes()
    # without the slack, that budget takes case 1 by its xz size, tar's headers make the archive larger: dropped
    with pytest.MonkeyPatch.context() as m:
        m.setattr("training.device_pack.ARCHIVE_SLACK", 0)
        assert pack_data(src, tmp_path / "tight", budget=fixed + share["case_00001.nii.gz"]) == (fixed, 0)
    assert sorted(p.name for p in (tmp_path / "tight").iterdir()) == ["fixed.tar.xz"]


def test_pack_data_leaves_out_the_held_out_test_sets_kits23_cases(tmp_path):
    """A device run must not paint the cases its model is judged on (benchmarks/held_out_kits23.json)."""
    import json
    held_out = sorted(json.loads((REPO / "benchmarks" / "held_out_kits23.json").read_text())["cases"])
    assert len(held_out) == 24 and "case_00531" in held_out
    src = tmp_path / "src"
    _file(src / "anatomy" / "amos" / "amos_0013.nii.gz", b"map")
    for i, case in enumerate([held_out[0], "case_00004", held_out[-1]]):  # case_00004 is not held out
        _kits_map(src / "kits23" / "labels" / f"{case}.nii.gz", (20, 40, 40), [np.s_[5:15, 10:30, 5:15]], seed=i)
    assert pack_data(src, tmp_path / "out", budget=10**8)[1] == 1
    got = _unpack(tmp_path / "out", tmp_path / "got")
    assert sorted(p.name for p in (got / "kits23" / "labels").iterdir()) == ["case_00004.nii.gz"]
    script = (REPO / "training" / "device_run.sh").read_text()
    assert "--exclude benchmarks/held_out_kits23.json" in script  # and its painter leaves them out too


def _same_kidneys(a: Path, b: Path) -> None:
    ka, kb = kits_kidneys(read_labelmap(a)), kits_kidneys(read_labelmap(b))
    assert sorted(ka) == sorted(kb)
    for side in ka:
        assert np.array_equal(ka[side].array, kb[side].array), side
        ga, gb = ka[side].geometry, kb[side].geometry
        assert np.allclose(ga.origin, gb.origin, atol=1e-4) and ga.spacing == gb.spacing, side
        assert np.allclose(ga.direction, gb.direction) and ga.size == gb.size, side


@pytest.mark.parametrize("kidneys", [
    [np.s_[10:40, 60:100, 20:50], np.s_[12:44, 58:96, 110:140]],  # two kidneys: the side from their centres
    [np.s_[5:35, 20:60, 100:140]],  # one kidney off-centre on every axis: its side from the map's centre
])
@pytest.mark.parametrize("direction", [KITS_DIRECTION, (0, 1, 0, 0, 0, -1, 1, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)])
def test_a_map_cut_to_its_kidneys_paints_as_the_whole_map(tmp_path, kidneys, direction):
    """In every orientation (left-right along index z, along index y of a matrix that is not its own transpose,
    along index x), the cut is symmetric where it must be: an asymmetric cut moves a lone kidney's side."""
    whole, cut = tmp_path / "whole.nii.gz", tmp_path / "cut.nii.gz"
    _kits_map(whole, (70, 160, 160), kidneys, direction=direction)
    assert crop_to_kidneys(whole, cut) < whole.stat().st_size
    assert sitk.ReadImage(str(cut)).GetSize() != sitk.ReadImage(str(whole)).GetSize()
    _same_kidneys(whole, cut)


def test_a_real_kits23_map_cut_to_its_kidneys_paints_as_the_whole_map(tmp_path):
    maps = sorted(SHARED_KITS.glob("case_*.nii.gz"), key=lambda f: f.stat().st_size) if SHARED_KITS.is_dir() else []
    if not maps:
        pytest.skip(f"no KiTS23 label maps in {SHARED_KITS}")
    cut = tmp_path / "cut.nii.gz"
    assert crop_to_kidneys(maps[0], cut) < maps[0].stat().st_size / 4
    _same_kidneys(maps[0], cut)


def test_the_default_budget_leaves_room_for_the_repository_and_the_wheels(tmp_path):
    none = default_budget(tmp_path / "absent")
    assert 0 < none < CARRY_LIMIT - 1_000_000  # the tracked files (the models among them) take their share
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "simpleitk.tar.xz").write_bytes(b"x" * 12345)
    assert default_budget(tmp_path / "wheels") == none - 12345


def test_pack_refuses_a_budget_that_the_fixed_files_fill(tmp_path, capsys):
    from training.device_pack import main
    src = tmp_path / "src"
    _file(src / "anatomy" / "amos" / "amos_0013.nii.gz", os.urandom(2000))
    _kits_map(src / "kits23" / "labels" / "case_00000.nii.gz", (10, 10, 10), [np.s_[2:5, 2:5, 2:5]])
    assert main(["--data", str(src), "-o", str(tmp_path / "out"), "--budget-mb", "0.001"]) == 1  # 1000 bytes
    assert "does not fit" in capsys.readouterr().err
    assert main(["--data", str(src), "-o", str(tmp_path / "out"), "--budget-mb", "0.01"]) == 0


def test_pack_wheel_gives_a_site_packages_tarball(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "VALUE = 7\n")
    out = pack_wheel(wheel, tmp_path / "wheels")
    with tarfile.open(out) as t:
        assert "./pkg/__init__.py" in t.getnames()


def test_device_run_script_parses_and_refuses_unknown_options():
    script = REPO / "training" / "device_run.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bad = subprocess.run(["bash", str(script), "--frobnicate"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "unknown option '--frobnicate'" in bad.stderr


def test_the_gpu_recipe_trains_the_cpu_recipes_stage2_on_cases_painted_alike():
    """stage2_gpu differs from the CPU recipe's stage 2 (stage2_v2_mo) only in size and speed settings, and
    device_run.sh paints with mo's generator options, so a GPU model is the CPU recipe made faster."""
    import re

    from training.stage_config import config_path, load_stage_config, read_config
    gpu, cpu = read_config("stage2_gpu"), read_config("stage2_v2_mo")
    assert all(gpu[k] == cpu[k] for k in ("network", "labels", "preprocessing"))
    size = {"epochs", "batch_size", "val_every", "iterations_per_epoch", "num_workers", "cpu_bf16", "notes",
            "augment_on_device"}  # where the augmentation runs, not what it does (decision 111)
    g, c = gpu["training"], cpu["training"]
    default = {"skip_random_intensity_cases": False}  # False in mo, absent (the same) in the GPU recipe
    differ = {k for k in set(g) | set(c) if g.get(k, default.get(k)) != c.get(k, default.get(k))}
    assert differ <= size, differ - size
    painter = re.search(r"^painter=\((.*)\)$", (REPO / "training" / "device_run.sh").read_text(), re.M).group(1)
    assert painter.split() == list(load_stage_config(config_path("stage2_v2_mo")).synthetic_flags)
