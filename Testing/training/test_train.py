"""The trainer (training/train.py and helpers) on a tiny stage-2 cache built here with the datasets API.

Covers: the loss falls when one batch is fitted, exact resume (4 epochs == 2 + resume 2, bit for bit),
best.pt in the inference format, the CSV log, the sampler's foreground fraction / hard cases, the recipes,
and DDP with two gloo processes under torchrun (identical weights on both ranks, only rank 0 writes).
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.checkpoint import load_checkpoint
from KidneyTumorSegLib.geometry import Geometry
from KidneyTumorSegLib.image_io import write_image
from KidneyTumorSegLib.inference import sliding_window_inference
from training.datasets import discover, load_entry, preprocess_dataset
from training.augmentation import AugmentationConfig
from training.batch_augmentation import augment_batch
from training.losses import SegmentationLoss
from training.recipe import TrainingRecipe
from training.runlog import csv_columns
from training.sampling import (RANDOM, PatchSampler, entries_of_cases, hard_case_flags, load_cache,
                              random_intensity_cases)
from training.stage_config import CONFIG_DIR, load_stage_config
from training.optim import lr_factor, make_optimizer, train_step
from training.state import load_initial_weights
from training.train import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = CONFIG_DIR / "smoke.json"
SPACING = (2.0, 2.0, 3.0)  # x, y, z mm
SHAPE = (30, 60, 100)      # z, y, x: 90 x 120 x 200 mm


def fake_case(seed: int, cyst: bool):
    """Two kidney ellipsoids, a tumor in the first, a cyst in the second (if ``cyst``); CT in HU."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE, dtype=float)
    z, y, x = z * SPACING[2], y * SPACING[1], x * SPACING[0]
    lab = np.zeros(SHAPE, np.uint8)
    dz, dy = rng.uniform(-6, 6, 2)
    for cx in (50.0, 150.0):
        lab[((x - cx) / 20) ** 2 + ((y - 60 - dy) / 20) ** 2 + ((z - 45 - dz) / 28) ** 2 <= 1] = 1
    lab[((x - 58) / 9) ** 2 + ((y - 60 - dy) / 9) ** 2 + ((z - 45 - dz) / 10) ** 2 <= 1] = 2
    if cyst:
        lab[((x - 142) / 7) ** 2 + ((y - 60 - dy) / 7) ** 2 + ((z - 45 - dz) / 8) ** 2 <= 1] = 3
    ct = np.full(SHAPE, -80.0, np.float32)
    ct[:, :3] = ct[:, -3:] = -1000.0
    for k, hu in ((1, 160.0), (2, 60.0), (3, 5.0)):
        ct[lab == k] = hu
    return (ct + rng.normal(0, 8, SHAPE)).astype(np.int16), lab


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread: on a shared 2-core machine more threads mostly spin-wait (10x slower here)."""
    monkeypatch.setenv("KIDNEYTUMORSEG_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kits23")
    geom = Geometry(SPACING, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for i in range(4):
        ct, lab = fake_case(i, cyst=i % 2 == 0)
        d = root / f"case_{i:05d}"
        d.mkdir()
        write_image(ct, geom, d / "imaging.nii.gz")
        write_image(lab, geom, d / "segmentation.nii.gz")
    out = tmp_path_factory.mktemp("cache")
    preprocess_dataset(discover(root), 2, load_stage_config(SMOKE).preprocessing, out)
    return out


def run_args(cache: Path, out: Path, *extra: str):
    return ["--config", str(SMOKE), "--data", str(cache), "--out", str(out), "--folds", "2", "--fold", "0",
            "--device", "cpu", "--quiet", *extra]


def test_recipes_load():
    for path in sorted(CONFIG_DIR.glob("*.json")):
        stage = load_stage_config(path)
        recipe = TrainingRecipe.from_dict(stage.training)
        recipe.loss_config(len(stage.labels))
        lesion = "tumor" if stage.stage == 2 else ("masses" if "masses" in stage.labels else "kidney")
        assert recipe.foreground_index(stage.labels) == stage.labels.index(lesion), path.name
        assert recipe.foreground_fraction >= 1 / 3 or stage.stage == 1
        second = recipe.second_foreground(stage.labels)  # a second label names a class of the stage's (cc: cyst)
        assert second is None or stage.labels[second[0]] == recipe.second_foreground_label, path.name
    with pytest.raises(ValueError, match="Unknown training recipe keys"):
        TrainingRecipe.from_dict({"epoch": 3})
    r = TrainingRecipe(epochs=2, iterations_per_epoch=5)
    assert lr_factor(r, 0) == 1.0 and lr_factor(r, 5) == pytest.approx(0.5) and lr_factor(r, 10) == 0.0


def test_sampler_foreground_fraction_and_hard_cases(cache):
    index, ids = load_cache(cache)
    entries = entries_of_cases(index, ids)
    flags = hard_case_flags(index, entries, ["background", "kidney", "tumor", "cyst"], "cyst")
    assert any(flags) and not all(flags)
    s = PatchSampler(cache, entries, (16, 16, 16), 2, 1 / 3, flags, hard_case_factor=3.0)
    plans = s.plan_epoch(0, 30, 2)
    fg = [p for p in plans if p.centre_class != RANDOM]
    assert len(fg) == 20  # exactly a third of 60
    assert all(p.centre_class == 2 for p in fg)
    assert all(entries[p.entry]["class_voxels"].get("2", 0) > 0 for p in fg)
    assert plans == s.plan_epoch(0, 30, 2) and plans != s.plan_epoch(1, 30, 2)  # seeded by epoch
    randoms = [p for p in s.plan_epoch(0, 200, 2) if p.centre_class == RANDOM]
    share = np.mean([flags[p.entry] for p in randoms])
    expected = 3 * sum(flags) / (3 * sum(flags) + len(flags) - sum(flags))  # cyst entries weigh 3
    assert abs(share - expected) < 0.08 and share > np.mean(flags) + 0.1
    w = s.weights(np.array([1.0 if f else 3.0 for f in flags]), hard_loss_factor=1.0)
    assert w[np.argmin(flags)] > 1.0  # high-loss entries get a boost
    patch = s.make_patch(fg[0])
    assert patch["image"].shape == (1, 16, 16, 16) and patch["labels"].dtype == torch.long
    assert (patch["labels"] == 2).any()


def test_random_intensity_cases_come_from_the_generators_record(tmp_path):
    index = {"cases": {c: {"source_image": str(tmp_path / "data" / c / "imaging.nii.gz")} for c in "abc"}}
    with pytest.raises(ValueError, match="synthetic.json.*missing"):
        random_intensity_cases(index, ["a"])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic.json").write_text(json.dumps({"cases": {
        "a": {"random_intensities": True}, "b": {"random_intensities": False}, "c": {"phase": "portal"}}}))
    assert random_intensity_cases(index, ["a", "b", "c"]) == ["a"]
    assert random_intensity_cases(index, ["b", "c"]) == []


def test_training_leaves_out_random_intensity_cases(cache, tmp_path, capsys):
    index, ids = load_cache(cache)
    data = Path(index["cases"][ids[0]]["source_image"]).parent.parent
    config = json.loads(SMOKE.read_text())
    config["training"]["skip_random_intensity_cases"] = True
    (tmp_path / "c.json").write_text(json.dumps(config))
    args = run_args(cache, tmp_path / "run", "--epochs", "1", "--iterations", "1")
    args[args.index("--config") + 1] = str(tmp_path / "c.json")
    args.remove("--quiet")
    with pytest.raises(SystemExit, match="synthetic.json"):  # real data has no generator record
        main(args)
    log = data / "synthetic.json"
    try:
        split = json.loads((cache / "splits.json").read_text())["folds"][0]
        log.write_text(json.dumps({"cases": {split["train"][0]: {"random_intensities": True}}}))
        assert main(args) == 0
    finally:
        log.unlink()
    out = "".join(capsys.readouterr())
    n_entries = len(entries_of_cases(index, split["train"][1:]))
    assert "training without 1 random-intensity case(s)" in out and f"{n_entries} training /" in out


def test_moved_boxes_need_a_cache_cut_wide_enough(cache, tmp_path):
    config = json.loads(SMOKE.read_text())
    config["training"]["box_jitter_mm"] = [-5.0, 10.0]
    (tmp_path / "c.json").write_text(json.dumps(config))
    args = run_args(cache, tmp_path / "run", "--epochs", "1", "--iterations", "1")
    args[args.index("--config") + 1] = str(tmp_path / "c.json")
    with pytest.raises(SystemExit, match="too close for box_jitter_mm"):  # the cache keeps the rule's crops
        main(args)


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_loss_falls_on_one_batch(cache, autocast):
    torch.manual_seed(0)
    stage = load_stage_config(SMOKE)
    recipe = TrainingRecipe.from_dict(stage.training)
    index, ids = load_cache(cache)
    entries = entries_of_cases(index, ids)
    s = PatchSampler(cache, entries, stage.patch_size, 2, 1.0, [False] * len(entries))
    patches = [s.make_patch(p) for p in s.plan_epoch(0, 1, 2)]
    batch = {k: torch.stack([p[k] for p in patches]) for k in ("image", "labels")}
    model = stage.build(0)
    model.train()
    loss_fn = SegmentationLoss(recipe.loss_config(4))
    opt = make_optimizer(recipe.with_overrides(lr=1e-2), model.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    seen = []  # the dtype the network computes in (bfloat16 under --cpu-bf16's autocast)
    model.register_forward_hook(lambda mod, inp, out: seen.append(out.logits.dtype))
    losses = [train_step(model, batch, loss_fn, opt, scaler, torch.device("cpu"), autocast, 12.0)["total"]
              for _ in range(40)]
    assert set(seen) == {autocast or torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay float32
    assert losses[-1] < 0.6 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_cpu_bf16_is_recorded_and_validation_stays_float32(cache, tmp_path, monkeypatch, capsys):
    import training.train as train_mod
    dtypes = []
    real_validate = train_mod.validate
    monkeypatch.setattr(train_mod, "validate", lambda *a: dtypes.append(a[-1]) or real_validate(*a))
    assert main(run_args(cache, tmp_path / "bf", "--epochs", "1", "--iterations", "2", "--cpu-bf16")) == 0
    assert "device cpu +bf16," in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "bf" / "best.pt").provenance["cpu_bf16"] is True
    assert json.loads((tmp_path / "bf" / "config.json").read_text())["training"]["cpu_bf16"] is True
    assert dtypes == [False]  # validate(..., amp=False): float32, as inference
    # a run keeps one precision, so that its provenance is true: its stored recipe says bfloat16, so a resume
    # without the flag goes on in it
    more = ("--epochs", "2", "--iterations", "2", "--resume")
    assert main(run_args(cache, tmp_path / "bf", *more)) == 0
    assert torch.load(tmp_path / "bf" / "last.pt", map_location="cpu", weights_only=False)["run"]["cpu_bf16"] is True
    # a run from before the flag (no key in its state or recipe) trained in float32 and stays there
    state = torch.load(tmp_path / "bf" / "last.pt", map_location="cpu", weights_only=False)
    del state["run"]["cpu_bf16"]
    del state["config"]["training"]["cpu_bf16"]
    torch.save(state, tmp_path / "bf" / "last.pt")
    more = ("--epochs", "3", "--iterations", "2", "--resume")
    with pytest.raises(SystemExit, match="trained without --cpu-bf16"):
        main(run_args(cache, tmp_path / "bf", *more, "--cpu-bf16"))
    assert main(run_args(cache, tmp_path / "bf", *more)) == 0
    assert torch.load(tmp_path / "bf" / "last.pt", map_location="cpu", weights_only=False)["run"]["cpu_bf16"] is False
    # the recipe can ask for it too, so that a config (and reproduce) says how its model was trained
    config = json.loads(SMOKE.read_text(encoding="utf-8"))
    config["training"]["cpu_bf16"] = True
    (tmp_path / "bf16.json").write_text(json.dumps(config))
    args = run_args(cache, tmp_path / "recipe", "--epochs", "1", "--iterations", "2")
    args[args.index("--config") + 1] = str(tmp_path / "bf16.json")
    assert main(args) == 0 and load_checkpoint(tmp_path / "recipe" / "best.pt").provenance["cpu_bf16"] is True


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_run_resume_exact_best_and_log(cache, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("--epochs", "4", "--iterations", "2", "--val-every", "2", "--seed", "3")
    assert main(run_args(cache, a, *common)) == 0
    assert main(run_args(cache, b, *common, "--stop-after", "2")) == 0
    assert _state(b / "last.pt")["epoch"] == 2
    c = tmp_path / "c"  # fine-tuning on new data: --reset-best lets best.pt follow the new validation only
    shutil.copytree(b, c)
    assert main(run_args(cache, c, *common, "--resume", "--reset-best")) == 0
    assert _state(c / "last.pt")["best_epoch"] == 4
    assert main(run_args(cache, b, *common, "--resume")) == 0

    sa, sb = _state(a / "last.pt"), _state(b / "last.pt")
    assert sa["epoch"] == sb["epoch"] == 4 and sa["iteration"] == sb["iteration"] == 8
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for pid, st in sa["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, sb["optimizer"]["state"][pid][k]), (pid, k)
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"] == 8
    np.testing.assert_array_equal(sa["loss_ema"], sb["loss_ema"])
    assert sa["best_metric"] == sb["best_metric"] and sa["rng"]["numpy"] == sb["rng"]["numpy"]
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])

    labels = ["background", "kidney", "tumor", "cyst"]
    rows = {}
    for run in (a, b):
        with (run / "log.csv").open(newline="") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == csv_columns(labels)
            rows[run] = list(reader)
    assert [r["epoch"] for r in rows[a]] == ["1", "2", "3", "4"]
    assert [r["val_dice_mean"] != "" for r in rows[a]] == [False, True, False, True]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows[a]) == strip(rows[b])

    ckpt = load_checkpoint(a / "best.pt")
    assert ckpt.labels == labels
    assert ckpt.patch_size == tuple(json.loads(SMOKE.read_text(encoding="utf-8"))["patch_size"])
    assert ckpt.metrics["val_dice_mean"] == pytest.approx(sa["best_metric"])
    prov = ckpt.provenance
    assert prov["fold"] == 0 and prov["epochs"] == 4 and prov["data_root"] == str(cache.resolve())
    assert "git_commit" in prov and ckpt.preprocessing.to_dict() == json.loads(
        (cache / "index.json").read_text(encoding="utf-8"))["config"]
    index, ids = load_cache(cache)
    image = load_entry(cache, index_entries_first(index))["image"].astype(np.float32)
    probs = sliding_window_inference(image, ckpt.model, ckpt.patch_size, device="cpu")
    assert probs.shape == (4,) + image.shape and np.allclose(probs.sum(0), 1, atol=1e-4)


def index_entries_first(index):
    return next(e for c in sorted(index["cases"]) for e in index["cases"][c]["entries"])


def test_ddp_two_gloo_ranks(cache, tmp_path):
    out, dump = tmp_path / "run", tmp_path / "ranks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "KidneyTumorSeg"), str(REPO)]),
           "KIDNEYTUMORSEG_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", *run_args(cache, out, "--epochs", "1", "--iterations", "2",
                                            "--dump-rank-weights", str(dump))]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    w0, w1 = _state(dump / "rank0.pt"), _state(dump / "rank1.pt")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    last = _state(out / "last.pt")
    assert all(torch.equal(w0[k], last["model"][k]) for k in w0)
    assert last["run"] and load_checkpoint(out / "best.pt").provenance["world_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "log.csv"]
    with (out / "log.csv").open() as f:
        assert len(f.read().strip().splitlines()) == 2  # header + one epoch, written once (rank 0)


def test_max_minutes_ends_at_an_epoch_boundary_with_a_validated_model(cache, tmp_path):
    out = tmp_path / "limited"
    common = ("--epochs", "4", "--iterations", "2", "--val-every", "3", "--seed", "3")
    # No second epoch fits in 0.001 minutes: epoch 1 is validated (though val_every is 3), saved, and the run ends.
    assert main(run_args(cache, out, *common, "--max-minutes", "0.001")) == 0
    assert _state(out / "last.pt")["epoch"] == 1 and _state(out / "last.pt")["best_epoch"] == 1
    assert load_checkpoint(out / "best.pt").metrics["epoch"] == 1
    assert main(run_args(cache, out, *common, "--resume")) == 0  # and it continues to the planned end
    assert _state(out / "last.pt")["epoch"] == 4


def test_init_starts_a_new_run_from_earlier_weights(cache, tmp_path, monkeypatch):
    a, c = tmp_path / "a", tmp_path / "c"
    common = ("--epochs", "2", "--iterations", "2", "--val-every", "2", "--seed", "3")
    assert main(run_args(cache, a, *common)) == 0
    # What the run trains, as it stands right after the load (before any step): exactly a's best.pt. Checked on the
    # run's own model, so that it does not rest on two CPU runs agreeing to the last bit.
    import training.train as train_module
    started = {}

    def load_and_record(path, model, labels, member=None):
        assert member is None  # one network's best.pt: no --init-member
        load_initial_weights(path, model, labels, member)
        started.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(train_module, "load_initial_weights", load_and_record)
    assert main(run_args(cache, c, *common, "--init", str(a / "best.pt"), "--stop-after", "1")) == 0
    a_best = load_checkpoint(a / "best.pt").model.state_dict()
    assert started.keys() == a_best.keys() and all(torch.equal(started[k], a_best[k]) for k in a_best)
    sc = _state(c / "last.pt")
    # a new run: its own counters and a fresh schedule, the start recorded; and it trained on from there
    assert sc["epoch"] == 1 and sc["iteration"] == 2 and sc["scheduler"]["last_epoch"] == 2
    assert sc["run"]["init"] == str(a / "best.pt")
    assert any(not torch.equal(sc["model"][k], a_best[k]) for k in a_best if a_best[k].is_floating_point())

    # the weights it started from are exactly a's best.pt (checked on a fresh model of the same stage)
    stage = load_stage_config(SMOKE)
    model = stage.build(99)
    load_initial_weights(a / "best.pt", model, stage.labels)
    best = load_checkpoint(a / "best.pt").model.state_dict()
    assert all(torch.equal(model.state_dict()[k], best[k]) for k in best)
    with pytest.raises(SystemExit, match="predicts"):
        load_initial_weights(a / "last.pt", model, ["background", "kidney"])
    with pytest.raises(SystemExit, match="--init starts a new run"):
        main(run_args(cache, tmp_path / "d", *common, "--init", str(a / "last.pt"), "--resume"))
    with pytest.raises(SystemExit, match="does not exist"):
        main(run_args(cache, tmp_path / "e", *common, "--init", str(tmp_path / "missing.pt")))


def test_augment_on_device_crops_carry_a_margin_and_training_does_not_depend_on_the_workers(cache, tmp_path,
                                                                                          monkeypatch):
    index, ids = load_cache(cache)
    entries = entries_of_cases(index, ids)
    flags = [False] * len(entries)
    aug = AugmentationConfig(p_rotate=0.5)
    plain = PatchSampler(cache, entries, (16, 16, 16), 2, 0.5, flags, seed=1)
    on_device = PatchSampler(cache, entries, (16, 16, 16), 2, 0.5, flags, augmentation=aug, seed=1,
                             augment_on_device=True)
    for plan in on_device.plan_epoch(0, 3, 2):
        crop, patch = on_device.make_patch(plan), plain.make_patch(plan)
        assert crop["image"].shape == (1, 20, 20, 20) and crop["seed"] == plan.seed
        assert torch.equal(crop["image"][:, 2:18, 2:18, 2:18], patch["image"])  # the same patch, plus 2 voxels
        spacing_xyz = load_entry(cache, entries[plan.entry])["spacing"]  # the cache's, resampled
        assert crop["spacing_zyx"].tolist() == [float(v) for v in spacing_xyz[::-1]]
    # A run augmenting on the device (here the CPU) learns the same with the patches cut in a worker process as
    # in the training process: the augmentation follows each patch's plan, not the process drawing it.
    config = json.loads(SMOKE.read_text(encoding="utf-8"))
    config["training"]["augment_on_device"] = True
    (tmp_path / "device_aug.json").write_text(json.dumps(config), encoding="utf-8")
    import training.train as train_module
    shapes = []

    def augment_and_record(*args, **kw):
        out = augment_batch(*args, **kw)
        shapes.append((tuple(args[0].shape), tuple(out[0].shape)))
        return out

    monkeypatch.setattr(train_module, "augment_batch", augment_and_record)
    runs = {}
    for workers in ("0", "1"):
        out = tmp_path / f"w{workers}"
        args = run_args(cache, out, "--epochs", "1", "--iterations", "2", "--seed", "3", "--workers", workers)
        args[1] = str(tmp_path / "device_aug.json")
        assert main(args) == 0
        runs[workers] = _state(out / "last.pt")["model"]
    assert all(torch.equal(runs["0"][k], runs["1"][k]) for k in runs["0"])
    assert shapes == [((2, 1, 40, 40, 40), (2, 1, 32, 32, 32))] * 4  # each step's batch: crops in, patches out
