"""training.reproduce with a stage-2 config's extra KiTS23 shapes (``data.extra_cases``, decision 105): painted
beside the stage's own cases with the config's seed, linked with them into one folder, cached from it, and split so
that the trained fold validates on exactly the cases it validated on before."""
import json
import os
import shutil
from types import SimpleNamespace

import pytest

from training import own_data, reproduce
from training.datasets.splits import make_splits
from training.reproduce import Runner, StepError
from training.stage_config import load_stage_config, read_config, stage_config_from_dict

MAIN = [f"case_0000{i}" for i in range(1, 7)]  # the main data's KiTS23 shapes
EXTRA = ["case_00011", "case_00012", "case_00013", "case_00014", "case_00015"]
FLAGS = ["--bowel-walls", "--organ-contact"]


def _config(tmp_path, extra=EXTRA, seed=2027):
    d = read_config("stage2_v2_oc")
    d["data"] = {"synthetic_flags": FLAGS, "extra_cases": {"seed": seed, "kits23": list(extra)}}
    path = tmp_path / "stage2_extra.json"
    path.write_text(json.dumps(d))
    return path


def _painter(tmp_path, commands):
    """Runner.run stand-in: training.synthetic writes one case per KiTS23 shape (-n N: the main shapes; --cases:
    those), named as the painter names them (shape + anatomy map), with its generator log."""
    def fake_run(self, cmd, tag="", threads=None):
        cmd = [str(c) for c in cmd]
        commands.append(cmd)
        if cmd[cmd.index("-m") + 1] != "training.synthetic":
            return
        out = tmp_path / cmd[cmd.index("-o") + 1]
        shapes = cmd[cmd.index("--cases") + 1:cmd.index("--seed")] if "--cases" in cmd else MAIN
        cases = {f"{k}_FLARE22Tr00{i % 3 + 1:02d}": {"kits_case": k, "source": f"/labels/{k}.nii.gz",
                                                      "anatomy": f"/maps/FLARE22_Tr_00{i % 3 + 1:02d}.nii.gz",
                                                      "phase": "portal"} for i, k in enumerate(shapes)}
        for case in cases:
            (out / case).mkdir(parents=True, exist_ok=True)
            (out / case / "imaging.nii.gz").write_bytes(case.encode())
            (out / case / "segmentation.nii.gz").write_bytes(b"")
        (out / "synthetic.json").write_text(json.dumps({"seed": int(cmd[cmd.index("--seed") + 1]), "cases": cases}))
        (out / "anatomy_labels.json").write_text('{"liver": 1}')
    return fake_run


def _setup(tmp_path, monkeypatch, fold=1):
    commands = []
    monkeypatch.setattr(Runner, "run", _painter(tmp_path, commands))
    main = tmp_path / "main"
    Runner.run(None, ["python", "-m", "training.synthetic", "-o", "main", "-n", "6", "--seed", "7"])
    commands.clear()
    ids = sorted(json.loads((main / "synthetic.json").read_text())["cases"])
    make_splits(ids, n_folds=3, path=tmp_path / "splits.json")
    args = SimpleNamespace(fold=fold, device="cpu", synthetic=6, seed=7, quick=False, label_maps=tmp_path / "kits",
                           anatomy=[tmp_path / "flare"], data=main)
    return commands, args, ids


def test_the_config_names_a_seed_and_distinct_kits23_ids_beside_its_flags(tmp_path):
    cfg = load_stage_config(_config(tmp_path, extra=EXTRA[::-1]))
    assert cfg.extra_cases.seed == 2027 and cfg.extra_cases.kits23 == tuple(EXTRA)  # sorted
    mo = load_stage_config("stage2_v2_mo")  # decision 102's run: 160 new shapes beside oc's flags
    assert mo.extra_cases.seed == 2027 and len(set(mo.extra_cases.kits23)) == 160
    assert "--organ-contact" in mo.synthetic_flags
    base = read_config("stage2_v2_oc")
    for data, match in (({"synthetic_flags": FLAGS, "extra_cases": {"seed": 1, "kits23": ["case_1"]}}, "distinct"),
                        ({"synthetic_flags": FLAGS, "extra_cases": {"seed": 1, "kits23": EXTRA[:1] * 2}}, "distinct"),
                        ({"synthetic_flags": FLAGS, "extra_cases": {"kits23": EXTRA}}, "distinct"),
                        ({"extra_cases": {"seed": 1, "kits23": EXTRA}}, "synthetic_flags too"),
                        ({"synthetic_flags": FLAGS, "more": 1}, "optionally")):
        with pytest.raises(ValueError, match=match):
            stage_config_from_dict({**base, "data": data})


def test_extra_shapes_are_painted_linked_cached_and_split_around_the_trained_fold(tmp_path, monkeypatch):
    commands, args, ids = _setup(tmp_path, monkeypatch)
    config = _config(tmp_path)
    run = Runner(tmp_path)
    cache = reproduce.own_data_cache(config, args, run, tmp_path, tmp_path / "splits.json")
    own, more, prep = commands
    tag = "bowel_walls_organ_contact"
    assert own[own.index("-o") + 1] == str(tmp_path / "data" / tag) and own[own.index("-n") + 1] == "6"
    # the extra shapes: the config's ids and seed, the same flags and anatomy maps, and no -n or main seed
    assert more[more.index("-o") + 1] == str(tmp_path / "data" / f"{tag}_extra2027")
    assert more[more.index("--cases") + 1:more.index("--seed")] == EXTRA and more[more.index("--seed") + 1] == "2027"
    assert "-n" not in more and all(f in more for f in FLAGS)
    assert more[more.index("--anatomy") + 1] == str(tmp_path / "flare")
    # one folder links both paintings, with both generator logs merged; the cache is made from it
    both = tmp_path / "data" / f"{tag}_plus2027"
    log = json.loads((both / "synthetic.json").read_text())
    extra_ids = sorted(json.loads((tmp_path / "data" / f"{tag}_extra2027" / "synthetic.json").read_text())["cases"])
    assert sorted(log["cases"]) == sorted(ids + extra_ids) == sorted(p.name for p in both.iterdir() if p.is_dir())
    assert (both / extra_ids[0] / "imaging.nii.gz").read_bytes() == extra_ids[0].encode()
    assert (both / "anatomy_labels.json").read_text() == '{"liver": 1}'
    assert prep[prep.index("training.datasets.preprocess") + 1] == str(both)
    assert cache == tmp_path / "cache" / f"stage2_{tag}_plus2027_wide15" and prep[prep.index("-o") + 1] == str(cache)
    # the split: fold 1 validates on its main cases only and trains on every other case, extra ones included
    path = own_data.stage2_splits(config, args, tmp_path, tmp_path / "splits.json")
    main = json.loads((tmp_path / "splits.json").read_text())["folds"]
    folds = json.loads(path.read_text())["folds"]
    assert folds[1]["val"] == main[1]["val"] and folds[1]["train"] == sorted(set(ids + extra_ids) - set(main[1]["val"]))
    assert [sorted(set(f["val"]) - set(m["val"])) for f, m in zip(folds, main)] == [
        extra_ids[1::2], [], extra_ids[0::2]]  # the i-th extra case: fold (1 + 1 + i mod 2) mod 3
    # a rerun repeats no step and, with the painted cases gone, still trains with the same split
    shutil.rmtree(tmp_path / "data")
    assert reproduce.own_data_cache(config, args, run, tmp_path, tmp_path / "splits.json") == cache
    assert len(commands) == 3 and own_data.stage2_splits(config, args, tmp_path, tmp_path / "splits.json") == path
    assert json.loads(path.read_text())["folds"] == folds
    assert own_data.extra_provenance(config, args, tmp_path, tmp_path / "splits.json") == (
        f"; stage 2 also on 5 more KiTS23 shapes (data.extra_cases, seed 2027): {len(folds[1]['train'])} train / "
        f"{len(folds[1]['val'])} validation")
    assert own_data.extra_provenance(None, args, tmp_path, tmp_path / "splits.json") == ""


def test_other_extra_ids_never_train_on_the_old_cache_or_split(tmp_path, monkeypatch):
    """Even with the painting step's record deleted, the cache's record names the ids, so reproduce stops there,
    and the old split file is refused."""
    commands, args, _ = _setup(tmp_path, monkeypatch)
    run = Runner(tmp_path)
    reproduce.own_data_cache(_config(tmp_path), args, run, tmp_path, tmp_path / "splits.json")
    own_data.stage2_splits(_config(tmp_path), args, tmp_path, tmp_path / "splits.json")
    config = _config(tmp_path, extra=EXTRA[:-1])
    (tmp_path / "steps" / "data_bowel_walls_organ_contact_plus2027.json").unlink()
    with pytest.raises(StepError, match="preprocess2_bowel_walls_organ_contact_plus2027_wide15"):
        reproduce.own_data_cache(config, args, run, tmp_path, tmp_path / "splits.json")
    assert len(commands) == 4 and "--cases" in commands[-1]  # painted anew, then stopped before any cache
    with pytest.raises(StepError, match="other extra_cases"):
        own_data.stage2_splits(config, args, tmp_path, tmp_path / "splits.json")
    # and with the own cases deleted but their step kept, the extra step says what to do instead of failing
    shutil.rmtree(tmp_path / "data" / "bowel_walls_organ_contact")
    (tmp_path / "steps" / "data_bowel_walls_organ_contact_plus2027.json").unlink(missing_ok=True)
    with pytest.raises(StepError, match="delete .*steps.*data_bowel_walls_organ_contact.json"):
        reproduce.own_data_cache(config, args, run, tmp_path, tmp_path / "splits.json")


def test_fold_0_of_8_follows_decision_102s_rule_and_a_stale_file_is_refused(tmp_path):
    """The rule written for mo (checked against its splits file when decision 105 was made); a split file of other
    extra cases, or one that no longer extends the main splits, or a truncated one, is refused."""
    ids = [f"case_{i:05d}" for i in range(40)]
    make_splits(ids, n_folds=8, path=tmp_path / "splits.json")
    (tmp_path / "extra").mkdir()
    new = [f"case_{i:05d}_x" for i in range(100, 121)]
    (tmp_path / "extra" / "synthetic.json").write_text(json.dumps({"cases": {c: {} for c in new}}))
    key = {"seed": 3, "kits23": ["case_00100"]}
    out = own_data.splits_with_extra(tmp_path / "splits.json", tmp_path / "extra", key, 0, tmp_path / "s.json")
    main = json.loads((tmp_path / "splits.json").read_text())["folds"]
    stored = json.loads(out.read_text())
    expect = [sorted(m["val"]) for m in main]
    for i, c in enumerate(sorted(new)):  # decision 102: the i-th new case joins fold 1 + (i mod 7)'s validation
        expect[1 + i % 7].append(c)
    assert [f["val"] for f in stored["folds"]] == [sorted(v) for v in expect] and len(stored["folds"][0]["train"]) == 56
    with pytest.raises(StepError, match="other extra_cases"):
        own_data.splits_with_extra(tmp_path / "splits.json", tmp_path / "extra", {**key, "seed": 4}, 0, out)
    stored["folds"][0]["val"] = stored["folds"][0]["val"][1:]
    out.write_text(json.dumps(stored))
    with pytest.raises(StepError, match="does not extend"):
        own_data.splits_with_extra(tmp_path / "splits.json", tmp_path / "extra", key, 0, out)
    out.write_text('{"folds": [')
    with pytest.raises(StepError, match="not a readable splits file"):
        own_data.splits_with_extra(tmp_path / "splits.json", tmp_path / "extra", key, 0, out)


def test_extra_shapes_that_repeat_a_main_shape_are_refused_before_any_painting(tmp_path, monkeypatch):
    commands, args, _ = _setup(tmp_path, monkeypatch)
    config = _config(tmp_path, extra=["case_00003", "case_00011"])
    with pytest.raises(StepError, match="repeat shapes of.*case_00003"):
        reproduce.own_data_cache(config, args, Runner(tmp_path), tmp_path, tmp_path / "splits.json")
    assert len(commands) == 1 and "--cases" not in commands[0]  # the own cases only: no extra painting
    assert not (tmp_path / "data" / "bowel_walls_organ_contact_extra2027").exists()


def test_painted_cases_other_than_the_configs_are_refused(tmp_path, monkeypatch):
    _setup(tmp_path, monkeypatch)
    own, extra = tmp_path / "own", tmp_path / "extra"
    painted = {"case_00011_A": {"kits_case": "case_00011"}, "case_00001_A": {"kits_case": "case_00012"}}
    for d, cases in ((own, {"case_00001_A": {"kits_case": "case_00001"}}), (extra, painted)):
        d.mkdir()
        (d / "synthetic.json").write_text(json.dumps({"cases": cases}))
    with pytest.raises(StepError, match="not the config's extra_cases"):
        own_data.check_painted(extra, own, ["case_00011"])
    with pytest.raises(StepError, match="repeats case ids of.*case_00001_A"):
        own_data.check_painted(extra, own, ["case_00011", "case_00012"])


def test_the_linked_folder_holds_exactly_the_cases_of_both_as_relative_links(tmp_path):
    own, extra, out = tmp_path / "own", tmp_path / "extra", tmp_path / "both"
    for d, cases in ((own, ["a", "b"]), (extra, ["c"])):
        for c in cases:
            (d / c).mkdir(parents=True)
        (d / "synthetic.json").write_text(json.dumps({"seed": 1, "cases": {c: {} for c in cases}}))
        (d / "anatomy_labels.json").write_text("{}")
    out.mkdir()
    (out / "old").symlink_to("../own/a", target_is_directory=True)  # a case no longer listed
    (out / "a").symlink_to(str(extra / "c"), target_is_directory=True)  # a link that points elsewhere
    own_data.link_cases(own, extra, out)
    assert sorted(p.name for p in out.iterdir()) == ["a", "anatomy_labels.json", "b", "c", "synthetic.json"]
    assert {p.name: os.readlink(p) for p in out.iterdir() if p.is_symlink()} == {
        "a": "../own/a", "b": "../own/b", "c": "../extra/c"}
    moved = tmp_path / "moved"  # relative links survive a moved work folder
    for name in ("own", "extra", "both"):
        shutil.copytree(tmp_path / name, moved / name, symlinks=True)
    assert (moved / "both" / "c").resolve() == (moved / "extra" / "c").resolve()
    (out / "stray").mkdir()
    with pytest.raises(StepError, match="stray is not a link"):
        own_data.link_cases(own, extra, out)
    (out / "stray").rmdir()
    (extra / "anatomy_labels.json").write_text('{"x": 1}')
    with pytest.raises(StepError, match="number the anatomy differently"):
        own_data.link_cases(own, extra, out)


def test_only_stage_2_and_its_seeds_train_with_the_extended_split(tmp_path, monkeypatch):
    from reproduce_fakes import recording_trainer
    from training.stage_config import config_path
    _, args, _ = _setup(tmp_path, monkeypatch)
    config = _config(tmp_path)
    run = Runner(tmp_path)
    cache = reproduce.own_data_cache(config, args, run, tmp_path, tmp_path / "splits.json")
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    args = SimpleNamespace(**vars(args), jobs=1, train_minutes=None, fit_epochs=False,
                           stage2_finetune_config=None, stage2_seeds=[0, 1], stage2_config=str(config))
    reproduce._train_steps(args, run, tmp_path, {1: config_path("stage1_v2"), 2: config}, tmp_path / "splits.json",
                           3, {1: tmp_path / "cache" / "stage1", 2: cache})
    splits = {c[c.index("--out") + 1].split("/")[-1]: c[c.index("--splits") + 1] for c in commands}
    extended = str(tmp_path / "splits_bowel_walls_organ_contact_plus2027_fold1.json")
    assert splits == {"stage1": str(tmp_path / "splits.json"), "stage2": extended, "stage2_seed1": extended}
