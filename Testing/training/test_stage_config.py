"""The shipped stage definitions build, and a model saved from one loads as a cascade stage."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from KidneyTumorSegLib.cascade import Stage
from KidneyTumorSegLib.checkpoint import load_checkpoint, save_checkpoint
from KidneyTumorSegLib.networks import config_to_dict
from training.recipe import TrainingRecipe
from training.stage_config import load_stage_config, merge_config, read_config
from training.train_options import resolve_config


@pytest.mark.parametrize("name,stage,classes", [("stage1_default", 1, 2), ("stage2_default", 2, 4)])
def test_default_configs_build_and_round_trip_through_a_checkpoint(tmp_path, name, stage, classes):
    cfg = load_stage_config(name)
    assert cfg.stage == stage and len(cfg.labels) == classes
    model = cfg.build()
    path = save_checkpoint(tmp_path / "m.pt", cfg.network_name, cfg.network, model, cfg.labels,
                           cfg.preprocessing, cfg.patch_size)
    loaded = Stage.from_checkpoint(load_checkpoint(path))
    assert loaded.patch_size == cfg.patch_size and loaded.preprocessing == cfg.preprocessing
    x = torch.randn(1, 1, 16, 20, 24)
    with torch.no_grad():
        assert loaded.model(x).shape == (1, classes, 16, 20, 24)


def test_unknown_keys_and_label_mismatch_are_refused(tmp_path):
    d = read_config("stage1_default")
    (tmp_path / "a.json").write_text(json.dumps({**d, "learning_rate": 1}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_stage_config(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({**d, "labels": ["background"]}))
    with pytest.raises(ValueError, match="1 labels for a network with 2 outputs"):
        load_stage_config(tmp_path / "b.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_stage_config(tmp_path / "missing.json")


@pytest.mark.parametrize("labels", [["background", "kidney", "aux_liver", "masses"],  # masses would be liver's class
                                    ["background", "kidney", "mases"], ["kidney", "background"],
                                    ["background", "kidney", "tumor"]])
def test_stage1_labels_must_be_kidney_and_maybe_masses_then_auxiliary_ones(tmp_path, labels):
    d = read_config("stage1_v2")
    d["labels"], d["network"]["config"]["num_classes"] = labels, len(labels)
    (tmp_path / "s1.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="must start with one of"):
        load_stage_config(tmp_path / "s1.json")
    assert load_stage_config("stage1_v2_ms").labels[:3] == ("background", "kidney", "masses")


def test_a_data_section_names_the_synthetic_flags_of_a_stages_own_cases(tmp_path):
    assert load_stage_config("stage2_v2_bw").synthetic_flags == ("--bowel-walls",)
    assert load_stage_config("stage2_v2_ft2").synthetic_flags == ()  # the recipe's main data
    d = read_config("stage2_v2_bw")
    for bad, match in (({"flags": ["--bowel-walls"]}, '"data" must be'), ({"synthetic_flags": "--bowel-walls"},
                       "must be a list"), ({"synthetic_flags": ["bowel-walls"]}, "must be a list")):
        (tmp_path / "b.json").write_text(json.dumps({**d, "data": bad}))
        with pytest.raises(ValueError, match=match):
            load_stage_config(tmp_path / "b.json")


@pytest.mark.parametrize("base,labels,main", [("stage1_default", 2, 2), ("stage1_v2", 6, 2), ("stage1_v2_ms", 7, 3)])
def test_quick_stage1_keeps_the_base_configs_labels_with_one_output_and_weight_each(tmp_path, base, labels, main):
    from training.reproduce import quick_config
    cfg = load_stage_config(quick_config(1, base, tmp_path / "q.json"))
    assert cfg.network_name == "residual_unet" and len(cfg.labels) == cfg.network.num_classes == labels
    weights = cfg.training["loss"]["class_weights"]
    assert len(weights) == labels and min(weights[1:main]) > max(weights[:1] + weights[main:])  # kidney (+ masses)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert cfg.build().eval()(x).shape[1] == labels


def test_a_config_with_a_base_holds_only_its_changes(tmp_path):
    assert merge_config({"a": {"b": 1, "c": [1, 2]}, "d": 0}, {"a": {"c": [3]}, "e": 1}) == \
        {"a": {"b": 1, "c": [3]}, "d": 0, "e": 1}  # dicts merge key by key, a list replaces the base's
    base, change = {"a": {"b": [1]}}, {"c": {"d": [2]}}
    merged = merge_config(base, change)
    merged["a"]["b"].append(9), merged["c"]["d"].append(9)
    assert base == {"a": {"b": [1]}} and change == {"c": {"d": [2]}}  # a new dict, the arguments untouched
    fh = read_config("stage2_v2_fh")
    (tmp_path / "mid.json").write_text(json.dumps({"base": "stage2_v2_fh", "training": {"epochs": 7}}))
    (tmp_path / "top.json").write_text(json.dumps({"base": "mid.json", "patch_size": [32, 32, 32]}))
    top = read_config(tmp_path / "top.json")  # a bare name is in training/configs, a file name beside the config
    assert "base" not in top and top["patch_size"] == [32, 32, 32] and top["training"]["epochs"] == 7
    assert {k: v for k, v in top["training"].items() if k != "epochs"} == \
        {k: v for k, v in fh["training"].items() if k != "epochs"} and top["labels"] == fh["labels"]
    assert load_stage_config(tmp_path / "top.json").training["epochs"] == 7
    # the trainer runs with, and stores, the resolved dict
    assert resolve_config(SimpleNamespace(config=str(tmp_path / "top.json")), None) == top
    (tmp_path / "loop.json").write_text(json.dumps({"base": "loop.json"}))
    with pytest.raises(ValueError, match="comes back to itself"):
        read_config(tmp_path / "loop.json")
    (tmp_path / "null.json").write_text(json.dumps({"base": None}))
    with pytest.raises(ValueError, match="must name a config"):
        read_config(tmp_path / "null.json")
    (tmp_path / "orphan.json").write_text(json.dumps({"base": "nowhere.json"}))
    with pytest.raises(ValueError, match=r"nowhere.json \(the \"base\" of .*orphan.json\) does not exist"):
        read_config(tmp_path / "orphan.json")


def test_the_configs_named_by_the_default_model_still_describe_it():
    """A base config changed under a shipped model's config would silently change its recipe (decision 84)."""
    models = Path(__file__).resolve().parents[2] / "Resources" / "Models"
    registry = json.loads((models / "models.json").read_text(encoding="utf-8"))
    for stage in ("stage1", "stage2"):
        ckpt = torch.load(models / registry["models"][registry["default"]][stage]["file"], weights_only=True)
        prov = ckpt["provenance"]
        runs = prov.get("members", [prov])  # an averaged stage (v5's stage 2) records each network's training
        assert runs and all("config" in r for r in runs), stage
        for run in runs:
            cfg = load_stage_config(Path(run["config"]).stem)
            assert cfg.network_name == ckpt["network"]["name"], stage
            assert config_to_dict(cfg.network) == ckpt["network"]["config"], stage
            assert list(cfg.labels) == ckpt["labels"] and list(cfg.patch_size) == ckpt["inference"]["patch_size"]
            assert cfg.preprocessing.to_dict() == ckpt["preprocessing"], stage
            trained = run["recipe"]  # the recipe the trainer ran, as TrainingRecipe.to_dict() wrote it
            now = TrainingRecipe.from_dict(cfg.training).to_dict()
            assert {k: now[k] for k in trained if k != "notes"} == {k: v for k, v in trained.items() if k != "notes"}
