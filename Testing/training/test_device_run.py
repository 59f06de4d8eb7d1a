"""The GPU recipe's scripts: device_pack re-compresses the data and keeps it within its byte budget (smallest
KiTS maps first, held-out maps left out) and re-packs a wheel so that tar installs it; device_run.sh parses and
refuses unknown options."""
import gzip
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

from training.device_pack import CARRY_LIMIT, default_budget, pack_data, pack_wheel

REPO = Path(__file__).resolve().parents[2]


def _file(path: Path, data: bytes) -> None:
    """A file as the shared data holds it: .gz written at the fastest level."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.name.endswith(".gz") else data)


def test_pack_data_recompresses_and_takes_the_smallest_label_maps_within_the_budget(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    label = bytes(range(7)) * 5000  # compressible, like a label map
    _file(src / "anatomy" / "amos" / "amos_0013.nii.gz", label)
    _file(src / "anatomy" / "flare22" / "FLARE22_Tr_0042.nii.gz", label)
    _file(src / "anatomy" / "flare22" / "FLARE22_Tr_0043.nii.gz", label)  # held out: never carried
    _file(src / "real_ct" / "totalseg_s0009" / "ct.nii.gz", os.urandom(50))
    _file(src / "ct" / "example_ct.nii.gz", os.urandom(50))
    _file(src / "real_ct" / "ircadb_1.1" / "ct.nii.gz", os.urandom(10_000))  # not a small real CT
    for i, size in enumerate((4000, 1000, 3000, 2000)):  # incompressible: the sizes order the maps
        _file(src / "kits23" / "labels" / f"case_0000{i}.nii.gz", os.urandom(size))
    fixed = pack_data(src, out, budget=0)  # only what is always carried
    used = pack_data(src, out, budget=fixed + 3100)
    got = sorted(p.name for p in (out / "kits23" / "labels").iterdir())
    assert got == ["case_00001.nii.gz", "case_00003.nii.gz"]  # 1000 + 2000 fit; 3000 would not
    assert used == sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) <= fixed + 3100
    amos = out / "anatomy" / "amos" / "amos_0013.nii.gz"
    assert gzip.decompress(amos.read_bytes()) == label  # lossless, and smaller than the source
    assert amos.stat().st_size < (src / "anatomy" / "amos" / "amos_0013.nii.gz").stat().st_size
    assert (out / "anatomy" / "flare22" / "FLARE22_Tr_0042.nii.gz").is_file()
    assert not (out / "anatomy" / "flare22" / "FLARE22_Tr_0043.nii.gz").exists()
    assert (out / "real_ct" / "totalseg_s0009" / "ct.nii.gz").is_file()
    assert (out / "ct" / "example_ct.nii.gz").is_file()  # the example CT, not only its kidney masks
    assert not (out / "real_ct" / "ircadb_1.1").exists()


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
    _file(src / "kits23" / "labels" / "case_00000.nii.gz", os.urandom(100))
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
