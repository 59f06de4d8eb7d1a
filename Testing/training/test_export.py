"""Exporting two trained checkpoints as a release model and registering it in models.json."""
import hashlib
import json
import os

import pytest
import torch

from KidneyTumorSegLib import atomic
from KidneyTumorSegLib.checkpoint import load_checkpoint, save_checkpoint
from KidneyTumorSegLib.models import RESOURCES_ENV, ModelError, resolve_model
from KidneyTumorSegLib.networks import STAGE1_TINY, TINY, build_network
from KidneyTumorSegLib.preprocessing import PreprocessingConfig
from training import export
from training.export import ExportError, export_model, merge_into_registry, summarize_metrics_csv


def _tiny_run(path, stage):
    torch.manual_seed(stage)
    if stage == 1:
        name, config, labels, spacing = "residual_unet", STAGE1_TINY, ["background", "kidney"], (4.0, 4.0, 4.0)
    else:
        name, config, labels, spacing = "improved_vnet", TINY, ["background", "kidney", "tumor", "cyst"], (2.0,) * 3
    pre = PreprocessingConfig(target_spacing=spacing, mean=100.0, std=70.0)
    return save_checkpoint(path, name, config, build_network(name, config), labels, pre, (32, 32, 32),
                           provenance={"run": f"stage{stage}", "created_utc": "2020-01-01T00:00:00+00:00"},
                           metrics={"best_val_dice": 0.5 + stage / 10})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return _tiny_run(d / "run1" / "best.pt", 1), _tiny_run(d / "run2" / "best.pt", 2)


def _metrics_csv(path):
    path.write_text("case,region,labels,empty,tolerance_mm,dice,jaccard,precision,recall,asd_mm,hd95_mm,"
                    "surface_dice,ref_tumor_diameter_mm,tumor_size_bucket\n"
                    "case_1,kidney,1,,1.033,0.9,0.8,0.9,0.9,1.0,3.0,0.8,,\n"
                    "case_2,kidney,1,,1.033,0.8,0.7,0.8,0.8,2.0,5.0,0.6,,\n"
                    "case_1,tumor,2,pred,1.15,0,0,0,nan,nan,nan,0,25,2-4cm\n")
    return path


def test_export_writes_loadable_release_files_and_a_matching_entry(runs, tmp_path):
    metrics = summarize_metrics_csv(_metrics_csv(tmp_path / "metrics.csv"))
    assert metrics["n_cases"] == 2 and metrics["mean"]["kidney"]["dice"] == pytest.approx(0.85)
    assert metrics["mean"]["tumor"]["hd95_mm"] is None  # NaN only: undefined, not 0
    entries = export_model(*runs, "tiny", tmp_path / "out", metrics=metrics, data_provenance="synthetic x3")
    entry = entries["tiny"]
    folder = tmp_path / "out" / "tiny"
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by others, like any folder made here
    assert (folder / "models_entry.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in folder.iterdir()) == ["models_entry.json", "stage1.pt", "stage2.pt"]
    assert json.loads((folder / "models_entry.json").read_text(encoding="utf-8")) == entries
    for stage, src in zip(("stage1", "stage2"), runs):
        path = folder / f"{stage}.pt"
        assert entry[stage]["file"] == f"tiny/{stage}.pt"
        assert entry[stage]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry[stage]["size_bytes"] == path.stat().st_size
        ckpt, orig = load_checkpoint(path), load_checkpoint(src)
        assert ckpt.labels == orig.labels == entry[stage]["labels"]
        assert ckpt.preprocessing == orig.preprocessing and list(ckpt.patch_size) == entry[stage]["patch_size"]
        assert all(torch.equal(a, b) for a, b in zip(ckpt.model.state_dict().values(),
                                                       orig.model.state_dict().values()))
        assert ckpt.provenance["training_data"] == "synthetic x3"
        assert ckpt.provenance["trained_utc"] == "2020-01-01T00:00:00+00:00"
        assert ckpt.provenance["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert ckpt.metrics["cascade_validation"] == metrics and "best_val_dice" in ckpt.metrics
    assert entry["stage1"]["spacing_mm"] == [4.0, 4.0, 4.0] and entry["stage2"]["network"] == "improved_vnet"
    assert entry["metrics"] == metrics and entry["training_data"] == "synthetic x3"
    assert entry["license"] == export.KITS_LICENSE and entry["code_license"] == "Apache-2.0"  # weights vs code
    with pytest.raises(ExportError, match="already exists"):
        export_model(*runs, "tiny", tmp_path / "out")
    export_model(*runs, "tiny", tmp_path / "out", overwrite=True)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no staging left over


def test_export_refuses_swapped_stages_and_bad_names_without_publishing(runs, tmp_path):
    with pytest.raises(ExportError, match="cascade|stage-1"):
        export_model(runs[1], runs[0], "swapped", tmp_path)
    with pytest.raises(ExportError, match="Model name"):
        export_model(*runs, "../evil", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_merge_keeps_other_models_and_is_atomic(runs, tmp_path, monkeypatch):
    entries = export_model(*runs, "tiny", tmp_path / "Models")
    registry = tmp_path / "Models" / "models.json"
    registry.write_text(json.dumps({"schema_version": 1, "models": {"other": {"description": "keep me"}}}))
    merge_into_registry(registry, entries)
    data = json.loads(registry.read_text(encoding="utf-8"))
    assert set(data["models"]) == {"other", "tiny"} and data["models"]["other"] == {"description": "keep me"}
    with pytest.raises(ExportError, match="already has"):
        merge_into_registry(registry, entries)
    before = registry.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(atomic.os, "fsync", crash)  # a failure mid-write leaves the old file intact
    with pytest.raises(OSError):
        merge_into_registry(registry, entries, replace=True)
    assert registry.read_bytes() == before
    assert sorted(p.name for p in registry.parent.iterdir()) == ["models.json", "tiny"]


def test_resolve_model_finds_the_exported_model_through_a_registry(runs, tmp_path, monkeypatch):
    out = tmp_path / "release"
    entries = export_model(*runs, "tiny", out)
    registry = tmp_path / "Resources" / "Models" / "models.json"
    merge_into_registry(registry, entries, files_root=out)  # files stay in out/, paths rewritten
    monkeypatch.setenv(RESOURCES_ENV, str(tmp_path / "Resources"))
    files = resolve_model("tiny")
    with pytest.raises(ModelError, match="No model named 'default'"):
        resolve_model("default")
    merge_into_registry(registry, entries, replace=True, files_root=out, make_default=True)
    assert resolve_model("default") == files
    assert files.stage1.resolve() == (out / "tiny" / "stage1.pt").resolve()
    assert files.stage2.resolve() == (out / "tiny" / "stage2.pt").resolve()
    assert load_checkpoint(files.stage2).labels == ["background", "kidney", "tumor", "cyst"]


def test_cli_prints_entry_and_registers(runs, tmp_path, capsys):
    models = tmp_path / "Models"
    rc = export.main(["--stage1", str(runs[0]), "--stage2", str(runs[1]), "--name", "cli", "-o", str(models),
                      "--data-provenance", "tiny", "--registry", str(models / "models.json")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    registered = json.loads((models / "models.json").read_text(encoding="utf-8"))["models"]["cli"]["stage1"]
    assert printed["cli"]["stage1"]["sha256"] == registered["sha256"]
    assert registered["file"] == "cli/stage1.pt"
    assert export.main(["--stage1", str(runs[0]), "--stage2", str(runs[1]), "--name", "cli", "-o", str(models)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert os.path.isfile(models / "cli" / "stage1.pt")


def test_the_weights_license_follows_the_training_data_and_the_code_license_is_apache(runs, tmp_path):
    flare = export_model(*runs, "flare", tmp_path, license="kits+flare22")["flare"]
    assert flare["license"] == export.KITS_FLARE22_LICENSE and "non-commercial research" in flare["license"]
    own = export_model(*runs, "own", tmp_path, license="CC BY 4.0 (own data)")["own"]
    assert own["license"] == "CC BY 4.0 (own data)" and own["code_license"] == "Apache-2.0"
    assert not any("MIT" in text for text in export.LICENSES.values())


def test_min_confidence_reaches_the_registry_and_the_cli(runs, tmp_path, monkeypatch):
    from KidneyTumorSegLib import models as models_mod
    models = tmp_path / "Models"
    assert export.main(["--stage1", str(runs[0]), "--stage2", str(runs[1]), "--name", "conf", "-o", str(models),
                        "--min-confidence", "0.38", "--registry", str(models / "models.json"), "--default"]) == 0
    assert json.loads((models / "models.json").read_text(encoding="utf-8"))["models"]["conf"]["min_confidence"] == 0.38
    monkeypatch.setattr(models_mod, "registry_path", lambda: models / "models.json")
    assert models_mod.recommended_min_confidence("default") == 0.38
    assert models_mod.recommended_min_confidence(str(models / "conf")) == 0.38  # the folder's own entry
    assert models_mod.recommended_min_confidence(str(tmp_path)) == models_mod.FALLBACK_MIN_CONFIDENCE
    with pytest.raises(export.ExportError, match="between 0 and 1"):
        export.export_model(runs[0], runs[1], "bad", tmp_path / "x", min_confidence=1.5)


def test_stage2_mirror_axes_reach_the_entry_the_registry_and_the_cascade(runs, tmp_path, monkeypatch):
    from KidneyTumorSegLib import models as models_mod
    from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade
    models = tmp_path / "Models"
    assert export.main(["--stage1", str(runs[0]), "--stage2", str(runs[1]), "--name", "tta", "-o", str(models),
                        "--stage2-mirror-axes", "1", "2", "--registry", str(models / "models.json")]) == 0
    assert json.loads((models / "models.json").read_text(encoding="utf-8"))["models"]["tta"]["stage2_mirror_axes"] \
        == [1, 2]
    monkeypatch.setattr(models_mod, "registry_path", lambda: models / "models.json")
    assert models_mod.recommended_stage2_mirror_axes("tta") == (1, 2)
    folder = str(models / "tta")
    assert models_mod.recommended_stage2_mirror_axes(folder) == (1, 2)  # the folder's own entry
    assert load_cascade(SegmentOptions(model=folder, device="cpu")).config.stage2_mirror_axes == (1, 2)
    assert load_cascade(SegmentOptions(model=folder, device="cpu", stage2_mirror_axes=())).config \
        .stage2_mirror_axes == ()  # the caller's choice wins
    plain = export_model(*runs, "plain", tmp_path / "x")["plain"]
    assert "stage2_mirror_axes" not in plain
    assert models_mod.recommended_stage2_mirror_axes(str(tmp_path / "x" / "plain")) == ()
    with pytest.raises(export.ExportError, match="mirror"):
        export.export_model(runs[0], runs[1], "bad", tmp_path / "y", stage2_mirror_axes=[2, 2])
    assert not (tmp_path / "y" / "bad").exists()


def test_a_model_folder_with_wrong_mirror_axes_is_refused_naming_its_entry_file(runs, tmp_path):
    from KidneyTumorSegLib import models as models_mod
    export_model(*runs, "m", tmp_path, stage2_mirror_axes=[2])
    entry_file = tmp_path / "m" / "models_entry.json"
    for wrong in ([3], "2", [True], [1.0], 0, False, {}):
        data = json.loads(entry_file.read_text(encoding="utf-8"))
        data["m"]["stage2_mirror_axes"] = wrong
        entry_file.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(ModelError, match=f"stage2_mirror_axes of {entry_file} are wrong.*export the model"):
            models_mod.recommended_stage2_mirror_axes(str(tmp_path / "m"))


def test_cyst_hu_reaches_the_entry_and_the_cascade_and_the_caller_can_turn_it_off(runs, tmp_path):
    from KidneyTumorSegLib.lesion_density import SIMPLE_FLUID_HU
    from KidneyTumorSegLib.pipeline import SegmentOptions, load_cascade
    assert export.main(["--stage1", str(runs[0]), "--stage2", str(runs[1]), "--name", "w", "-o", str(tmp_path),
                        "--cyst-hu", "-5", "15"]) == 0
    folder = str(tmp_path / "w")
    assert json.loads((tmp_path / "w" / "models_entry.json").read_text(encoding="utf-8"))["w"]["cyst_hu"] == [-5, 15]

    def cyst_hu(model, choice):
        return load_cascade(SegmentOptions(model=model, device="cpu", cyst_by_density=choice)).config.cyst_hu
    assert cyst_hu(folder, None) == (-5.0, 15.0)   # the model's recommendation
    assert cyst_hu(folder, True) == (-5.0, 15.0)   # on: still the model's own range
    assert cyst_hu(folder, False) is None          # off wins
    plain = export_model(*runs, "plain", tmp_path / "x")["plain"]
    assert "cyst_hu" not in plain
    assert cyst_hu(str(tmp_path / "x" / "plain"), None) is None
    assert cyst_hu(str(tmp_path / "x" / "plain"), True) == SIMPLE_FLUID_HU  # on, with none recommended: Bosniak's
    with pytest.raises(ExportError, match="--cyst-hu must be two finite numbers with low < high"):
        export_model(*runs, "bad", tmp_path / "y", cyst_hu=[20, -9])
    assert not (tmp_path / "y" / "bad").exists()
