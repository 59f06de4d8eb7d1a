"""training.reproduce's step runner: steps run once, side by side with --jobs 2, failures reported."""
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from training.reproduce import Runner, StepError
from training.reproduce_checks import check_configs
from reproduce_fakes import recording_trainer
from training.stage_config import CONFIG_DIR, read_config


STEP = """
import pathlib, sys, time
folder, name, meet, limit_s = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
(folder / f"{name}.started").touch()
print("start", flush=True)
deadline = time.monotonic() + limit_s
while meet and not (folder / f"{meet}.started").exists() and time.monotonic() < deadline:
    time.sleep(0.01)
seen = not meet or (folder / f"{meet}.started").exists()
print("end", flush=True)
(folder / f"{name}.done").write_text("together" if meet and seen else "alone")
sys.exit(0 if seen else 4)
"""


def _step(folder, name, meet="", limit_s=60.0):
    """A step's command: marks ``name`` started, then (with ``meet``) waits until step ``meet`` has started
    too, which happens only when both run at the same time. Steps one after the other would leave the first
    waiting for its safety limit (``limit_s``), then failing with exit 4. No assertion on durations."""
    return [sys.executable, "-c", STEP, str(folder), name, meet, str(limit_s)]


def test_two_steps_run_side_by_side_and_are_marked_done(tmp_path):
    run = Runner(tmp_path / "work")
    steps = [(f"s{i}", {"i": i}, lambda tag, threads, i=i: run.run(_step(tmp_path, f"s{i}", f"s{3 - i}"), tag,
                                                                     threads)) for i in (1, 2)]
    run.steps(steps, jobs=2)  # each step waits for the other to start: they overlap, or one exits 4
    assert all((tmp_path / f"s{i}.done").read_text() == "together" for i in (1, 2))
    log = (tmp_path / "work" / "reproduce.log").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("[s1] start") for line in log) and any(line.startswith("[s2] end") for line in log)
    for i in (1, 2):
        assert json.loads((tmp_path / "work" / "steps" / f"s{i}.json").read_text())["settings"] == {"i": i}
    (tmp_path / "s1.done").unlink()
    run.steps(steps, jobs=2)  # done steps are skipped
    assert not (tmp_path / "s1.done").exists()


def test_a_failing_step_is_reported_after_the_other_finished(tmp_path):
    run = Runner(tmp_path / "work")
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    steps = [("bad", {}, lambda tag, threads: run.run(fail, tag, threads)),
             ("good", {}, lambda tag, threads: run.run(_step(tmp_path, "good"), tag, threads))]
    with pytest.raises(StepError, match="exit 3"):
        run.steps(steps, jobs=2)
    assert (tmp_path / "good.done").is_file()
    assert (tmp_path / "work" / "steps" / "good.json").is_file()
    assert not (tmp_path / "work" / "steps" / "bad.json").exists()  # rerun later


def test_anatomy_maps_reach_the_synthetic_step(tmp_path, monkeypatch):
    from training import reproduce
    seen = []

    def record(self, cmd, tag="", threads=None):
        seen.append([str(c) for c in cmd])
        raise StepError("stop after the first command")

    monkeypatch.setattr(Runner, "run", record)
    maps = [tmp_path / "totalseg", tmp_path / "FLARE22_Tr_0001.nii.gz"]
    assert reproduce.main(["--data", str(tmp_path / "d"), "--work", str(tmp_path / "w"), "--synthetic", "3",
                           "--anatomy", *map(str, maps)]) == 1
    cmd = seen[0]
    assert cmd[cmd.index("-m") + 1] == "training.synthetic"
    assert cmd[cmd.index("--anatomy") + 1:cmd.index("--anatomy") + 3] == [str(m) for m in maps]
    with pytest.raises(SystemExit):  # --anatomy only shapes synthetic data
        reproduce.main(["--data", str(tmp_path / "d"), "--work", str(tmp_path / "w"), "--anatomy", str(maps[0])])


def test_train_minutes_reach_the_trainer(tmp_path):
    from training.reproduce import train_command
    cmd = [str(c) for c in train_command(tmp_path / "c.json", tmp_path, tmp_path / "run", tmp_path / "s.json",
                                         0, 5, "cuda", max_minutes=2.5)]
    assert cmd[cmd.index("--max-minutes") + 1] == "2.5" and "--resume" not in cmd
    assert "--max-minutes" not in [str(c) for c in train_command(tmp_path / "c.json", tmp_path, tmp_path / "run",
                                                                  tmp_path / "s.json", 0, 5, "cpu")]
    assert "--fit-epochs" not in cmd
    fitted = train_command(tmp_path / "c.json", tmp_path, tmp_path / "run", tmp_path / "s.json", 0, 5, "cuda",
                           max_minutes=2.5, fit_epochs=True)
    assert fitted[fitted.index("--max-minutes") + 2] == "--fit-epochs"
    from training import reproduce
    with pytest.raises(SystemExit):  # fitting needs the time limit
        reproduce.main(["--data", str(tmp_path / "d"), "--work", str(tmp_path / "w"), "--fit-epochs"])


def test_stage2_finetunes_chain_each_from_the_previous_runs_last_weights_then_resume(tmp_path, monkeypatch):
    from training.reproduce import _finetune_step
    first = tmp_path / "runs" / "stage2"
    first.mkdir(parents=True)
    (first / "last.pt").write_bytes(b"weights")
    commands = []
    monkeypatch.setattr(Runner, "run", lambda self, cmd, tag="", threads=None: commands.append([str(c) for c in cmd]))
    args = SimpleNamespace(fold=0, device="cpu", fit_epochs=False)
    run_dir = _finetune_step("stage2_v2_ft", 1, args, Runner(tmp_path), tmp_path, first, tmp_path / "splits.json", 8,
                             None)
    assert run_dir == tmp_path / "runs" / "stage2_ft"
    cmd = commands[-1]
    assert cmd[cmd.index("--init") + 1] == str(first / "last.pt") and "--resume" not in cmd
    assert cmd[cmd.index("--out") + 1] == str(run_dir) and cmd[cmd.index("--config") + 1].endswith("stage2_v2_ft.json")
    # interrupted (its own last.pt exists, step not done): it resumes instead of starting again
    (tmp_path / "steps" / "train2ft.json").unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "last.pt").write_bytes(b"partial")
    _finetune_step("stage2_v2_ft", 1, args, Runner(tmp_path), tmp_path, first, tmp_path / "splits.json", 8, None)
    assert "--resume" in commands[-1] and "--init" not in commands[-1]
    # a second fine-tune starts from the first one's last weights, in a run folder and step of its own
    second = _finetune_step("stage2_v2_ft2", 2, args, Runner(tmp_path), tmp_path, run_dir, tmp_path / "splits.json",
                            8, None)
    cmd = commands[-1]
    assert second == tmp_path / "runs" / "stage2_ft2" and (tmp_path / "steps" / "train2ft2.json").is_file()
    assert cmd[cmd.index("--init") + 1] == str(run_dir / "last.pt")
    assert cmd[cmd.index("--config") + 1].endswith("stage2_v2_ft2.json")


def test_train_steps_chain_every_finetune_config_and_ship_the_last(tmp_path, monkeypatch):
    """reproduce's training: both stages, then each --stage2-finetune-config from the run before it; the
    shipped stage 2 is the last fine-tune's best.pt."""
    from training import reproduce
    commands = []
    monkeypatch.setattr(Runner, "run", recording_trainer(tmp_path, commands))
    args = SimpleNamespace(fold=0, device="cpu", jobs=1, train_minutes=None, fit_epochs=False,
                           stage2_finetune_config=["stage2_v2_ft", "stage2_v2_ft2"])
    configs = {s: CONFIG_DIR / f"stage{s}_v2.json" for s in (1, 2)}
    best = reproduce._train_steps(args, Runner(tmp_path), tmp_path, configs, tmp_path / "splits.json", 8)
    assert best == [tmp_path / "runs" / "stage1" / "best.pt", tmp_path / "runs" / "stage2_ft2" / "best.pt"]
    inits = [c[c.index("--init") + 1] if "--init" in c else None for c in commands]
    assert inits == [None, None, str(tmp_path / "runs" / "stage2" / "last.pt"),
                     str(tmp_path / "runs" / "stage2_ft" / "last.pt")]
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["train1.json", "train2.json", "train2ft.json",
                                                                       "train2ft2.json"]
    # a time limit is shared by the four runs one after the other
    for p in (tmp_path / "steps").iterdir():
        p.unlink()
    commands.clear()
    reproduce._train_steps(SimpleNamespace(**{**vars(args), "train_minutes": 30.0}), Runner(tmp_path), tmp_path,
                           configs, tmp_path / "splits.json", 8)
    assert [c[c.index("--max-minutes") + 1] for c in commands] == ["7.5"] * 4
    assert not any("--fit-epochs" in c for c in commands)
    for p in (tmp_path / "steps").iterdir():  # and --fit-epochs reaches every run, fine-tunes included
        p.unlink()
    commands.clear()
    reproduce._train_steps(SimpleNamespace(**{**vars(args), "train_minutes": 30.0, "fit_epochs": True}),
                           Runner(tmp_path), tmp_path, configs, tmp_path / "splits.json", 8)
    assert len(commands) == 4 and all(c[c.index("--max-minutes") + 2] == "--fit-epochs" for c in commands)


def _main_data(tmp_path, ids, seed=7):
    """A DATA_ROOT as training.synthetic leaves it: its generator log (no images needed here)."""
    entries = {c: {"source": f"/labels/{c}.nii.gz", "anatomy": f"/maps/FLARE22_Tr_000{i}.nii.gz", "phase": "portal"}
               for i, c in enumerate(ids)}
    (tmp_path / "main").mkdir(exist_ok=True)
    (tmp_path / "main" / "synthetic.json").write_text(json.dumps({"seed": seed, "cases": entries}))
    return entries


def _fake_generator(tmp_path, made, commands):
    """Runner.run stand-in: records each command; training.synthetic writes made["entries"] as kits cases."""
    def fake_run(self, cmd, tag="", threads=None):
        cmd = [str(c) for c in cmd]
        commands.append(cmd)
        if cmd[cmd.index("-m") + 1] == "training.synthetic":
            out = tmp_path / cmd[cmd.index("-o") + 1]
            for case in made["entries"]:
                (out / case).mkdir(parents=True, exist_ok=True)
                for f in ("imaging.nii.gz", "segmentation.nii.gz"):
                    (out / case / f).write_bytes(b"")
            (out / "synthetic.json").write_text(json.dumps({"seed": 7, "cases": made["entries"]}))
    return fake_run


def test_a_finetune_with_synthetic_flags_trains_on_its_own_cases_with_the_same_ids(tmp_path, monkeypatch):
    """stage2_v2_bw (decision 52): reproduce makes its cases with the main data's N, seed and anatomy plus
    --bowel-walls, checks they are the main data's cases, caches them and fine-tunes stage 2 on that cache."""
    from training.datasets.splits import make_splits
    from training.reproduce import _finetune_step
    ids = ["case_00001", "case_00002", "case_00003"]
    make_splits(ids, n_folds=3, path=tmp_path / "splits.json")
    entries = _main_data(tmp_path, ids)
    commands, made = [], {"entries": entries}
    monkeypatch.setattr(Runner, "run", _fake_generator(tmp_path, made, commands))
    first = tmp_path / "runs" / "stage2_ft2"
    first.mkdir(parents=True)
    (first / "last.pt").write_bytes(b"weights")
    args = SimpleNamespace(fold=0, device="cpu", synthetic=3, seed=7, quick=False, label_maps=tmp_path / "kits",
                           anatomy=[tmp_path / "flare"], data=tmp_path / "main", fit_epochs=False)

    def finetune():
        return _finetune_step("stage2_v2_bw", 3, args, Runner(tmp_path), tmp_path, first, tmp_path / "splits.json",
                              3, None)
    finetune()
    gen, prep, train = commands
    assert gen[gen.index("-o") + 1] == str(tmp_path / "data" / "bowel_walls") and "--bowel-walls" in gen
    assert [gen[gen.index(k) + 1] for k in ("-n", "--seed", "--anatomy")] == ["3", "7", str(tmp_path / "flare")]
    assert prep[prep.index("-o") + 1] == str(tmp_path / "cache" / "stage2_bowel_walls")
    assert train[train.index("--data") + 1] == str(tmp_path / "cache" / "stage2_bowel_walls")
    assert train[train.index("--init") + 1] == str(first / "last.pt")
    shutil.rmtree(tmp_path / "data")
    finetune()  # a rerun skips all three steps, and needs no raw cases any more
    assert len(commands) == 3
    # other cases, or the same ids painted from other sources, are refused before any training on them
    for other, match in (({"case_00009": entries["case_00001"]}, "different case list"),
                         ({**entries, "case_00002": {**entries["case_00002"], "phase": "unenhanced"}},
                          "case_00002 has another phase")):
        for name in ("data_bowel_walls", "preprocess2_bowel_walls", "train2ft3"):
            (tmp_path / "steps" / f"{name}.json").unlink(missing_ok=True)
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
        made["entries"] = other
        with pytest.raises(StepError, match=match):
            finetune()
        assert commands[-1][commands[-1].index("-m") + 1] == "training.synthetic"  # nothing after the check


def test_missing_settings_for_a_finetune_stop_reproduce_before_any_step(tmp_path, monkeypatch):
    from training import reproduce
    commands = []
    monkeypatch.setattr(Runner, "run", lambda self, cmd, tag="", threads=None: commands.append(cmd))
    base = ["--data", str(tmp_path / "d"), "--work", str(tmp_path / "w")]
    assert reproduce.main(base + ["--stage2-finetune-config", "stage2_v2_ft", "stage2_v2_bw"]) == 1
    assert reproduce.main(base + ["--quick", "--stage2-finetune-config", "stage2_v2_ft"]) == 1
    log = (tmp_path / "w" / "reproduce.log").read_text(encoding="utf-8")
    assert "stage2_v2_bw.json trains on synthetic cases made with --bowel-walls" in log
    assert "--quick trains the tiny smoke networks" in log
    # a main stage 2 with data of its own needs the generator's settings as well
    assert reproduce.main(base + ["--stage2-config", "stage2_v2_scratch"]) == 1
    assert "stage2_v2_scratch.json trains on synthetic cases made with --bowel-walls" in \
        (tmp_path / "w" / "reproduce.log").read_text(encoding="utf-8")
    # auxiliary classes need anatomy maps, which cases made without --anatomy (or downloaded) lack
    for extra in (["--quick", "--stage1-config", "stage1_v2"], ["--synthetic", "2", "--stage2-config", "stage2_v2"],
                  ["--download-kits23", "--stage1-config", "stage1_v2"]):
        assert reproduce.main(base + extra) == 1
        assert "trains auxiliary classes (aux_liver, aux_spleen, aux_hilum, aux_body)" in \
            (tmp_path / "w" / "reproduce.log").read_text(encoding="utf-8").splitlines()[-1]
    # ... but a DATA already made (with its anatomy maps, checked by preprocessing) is not refused for the flags
    (tmp_path / "made" / "case_00001").mkdir(parents=True)
    for f in ("imaging.nii.gz", "segmentation.nii.gz"):
        (tmp_path / "made" / "case_00001" / f).write_bytes(b"")
    check_configs(SimpleNamespace(quick=False, synthetic=1, anatomy=None, download_kits23=False,
                                  data=tmp_path / "made", stage1_config="stage1_v2",
                                  stage2_config="stage2_v2", stage2_finetune_config=None))
    # a main stage 2 on cases of its own never makes DATA's stage-2 cache, which a fine-tune without data needs
    chain = ["--stage2-config", "stage2_v2_scratch", "--stage2-finetune-config", "stage2_v2_ep", "stage2_v2_ft2"]
    assert reproduce.main(base + ["--synthetic", "2", "--anatomy", str(tmp_path), *chain]) == 1
    assert "fine-tunes without a \"data\" section (stage2_v2_ft2)" in \
        (tmp_path / "w" / "reproduce.log").read_text(encoding="utf-8").splitlines()[-1]
    # stage 1 may not have data of its own
    own = read_config("stage1_v2")
    own["data"] = {"synthetic_flags": ["--bowel-walls"]}
    (tmp_path / "stage1_own.json").write_text(json.dumps(own))
    args = SimpleNamespace(quick=False, stage1_config=str(tmp_path / "stage1_own.json"), stage2_config="stage2_v2",
                           jobs=1)
    with pytest.raises(StepError, match="names data of its own"):
        reproduce._preprocess_steps(args, Runner(tmp_path / "w"), tmp_path / "w", tmp_path / "d",
                                    tmp_path / "splits.json")
    assert commands == []


def test_a_main_stage2_with_synthetic_flags_trains_from_scratch_on_its_own_cases(tmp_path, monkeypatch):
    """stage2_v2_scratch (decision 59): stage 1 is cached from DATA, stage 2 from its own cases (the main
    data painted again with its flags), and trained there without --init."""
    from training import own_data, reproduce
    from training.datasets.splits import make_splits
    ids = ["case_00001", "case_00002", "case_00003"]
    make_splits(ids, n_folds=3, path=tmp_path / "splits.json")
    commands, made = [], {"entries": _main_data(tmp_path, ids)}
    generate = _fake_generator(tmp_path, made, commands)

    def fake_run(self, cmd, tag="", threads=None):
        generate(self, cmd, tag, threads)
        cmd = [str(c) for c in cmd]
        if "--out" in cmd:  # a training run leaves its weights behind
            out = tmp_path / cmd[cmd.index("--out") + 1]
            out.mkdir(parents=True, exist_ok=True)
            for f in ("last.pt", "best.pt"):
                (out / f).write_bytes(b"w")
    monkeypatch.setattr(Runner, "run", fake_run)
    args = SimpleNamespace(quick=False, stage1_config="stage1_v2", stage2_config="stage2_v2_scratch", jobs=1,
                           fold=0, device="cpu", synthetic=3, seed=7, label_maps=tmp_path / "kits",
                           anatomy=[tmp_path / "flare"], data=tmp_path / "main", train_minutes=None,
                           fit_epochs=False, stage2_finetune_config=None)
    run = Runner(tmp_path)
    configs, caches = reproduce._preprocess_steps(args, run, tmp_path, tmp_path / "main", tmp_path / "splits.json")
    tag = "bowel_walls_bowel_by_kidneys_extrarenal_pelvis"
    assert caches == {1: tmp_path / "cache" / "stage1", 2: tmp_path / "cache" / f"stage2_{tag}"}
    prep1, gen, prep2 = commands
    assert prep1[prep1.index("-o") + 1] == str(tmp_path / "cache" / "stage1")  # no stage-2 cache of DATA
    assert gen[gen.index("-o") + 1] == str(tmp_path / "data" / tag) and "--extrarenal-pelvis" in gen
    assert prep2[prep2.index("-o") + 1] == str(caches[2])
    best = reproduce._train_steps(args, run, tmp_path, configs, tmp_path / "splits.json", 3, caches)
    train1, train2 = commands[3:]
    assert train2[train2.index("--data") + 1] == str(caches[2]) and "--init" not in train2
    assert train1[train1.index("--data") + 1] == str(caches[1])
    assert best == [tmp_path / "runs" / "stage1" / "best.pt", tmp_path / "runs" / "stage2" / "best.pt"]
    # The release is validated on the cases the final stage 2 trained on; main-data stages on DATA.
    for final, expect in [("stage2_v2_scratch", tmp_path / "data" / tag), ("stage2_v2_ep", tmp_path / "data" / tag),
                          ("stage2_v2", tmp_path / "main"), (None, tmp_path / "main")]:
        path = CONFIG_DIR / f"{final}.json" if final else None
        assert own_data.evaluation_data(path, tmp_path, tmp_path / "main") == expect, final
    # A fine-tune with the same flags and preprocessing (stage2_v2_ep) shares those cases and that cache ...
    n = len(commands)
    assert reproduce.own_data_cache(CONFIG_DIR / "stage2_v2_ep.json", args, run, tmp_path,
                                    tmp_path / "splits.json") == caches[2]
    assert len(commands) == n
    # ... one whose boxes move in training (decision 95) gets a wider cache of its own, under a step of its own ...
    wide = reproduce.own_data_cache(CONFIG_DIR / "stage2_v2_bj.json", args, run, tmp_path, tmp_path / "splits.json")
    gen_bj, prep_bj = commands[n:]  # bj's cases are fh's (five options): made once, then cut wide
    bj_tag = Path(gen_bj[gen_bj.index("-o") + 1]).name
    assert wide == tmp_path / "cache" / f"stage2_{bj_tag}_wide15" and prep_bj[prep_bj.index("-o") + 1] == str(wide)
    assert prep_bj[-1].endswith("stage2_v2_bj.json")
    # ... while one that caches otherwise (another spacing) is refused, not trained on the old cache.
    other = read_config("stage2_v2_scratch")  # its "base" resolved: the whole definition
    other["preprocessing"]["target_spacing"] = [1.5, 1.5, 1.5]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(StepError, match="other settings"):
        reproduce.own_data_cache(tmp_path / "other.json", args, run, tmp_path, tmp_path / "splits.json")


def test_a_data_root_already_made_with_the_same_settings_is_kept_and_another_refused(tmp_path, monkeypatch):
    from training.reproduce import _data_step
    _main_data(tmp_path, ["case_00001", "case_00002"])
    commands = []
    monkeypatch.setattr(Runner, "run", lambda self, cmd, tag="", threads=None: commands.append(cmd))
    args = SimpleNamespace(synthetic=2, seed=8, quick=False, label_maps=tmp_path / "kits", anatomy=None)
    with pytest.raises(StepError, match="2 synthetic cases made with seed 7"):
        _data_step(args, Runner(tmp_path / "w"), tmp_path / "main")
    assert not (tmp_path / "w" / "steps" / "data.json").exists()
    _data_step(SimpleNamespace(**{**vars(args), "seed": 7}), Runner(tmp_path / "w"), tmp_path / "main")
    assert commands == [] and (tmp_path / "w" / "steps" / "data.json").is_file()


def test_bowel_walls_need_the_real_anatomy_painter(tmp_path):
    from training import synthetic
    with pytest.raises(SystemExit):
        synthetic.main(["--kits23", str(tmp_path), "-o", str(tmp_path / "out"), "--bowel-walls"])
    assert not (tmp_path / "out" / "synthetic.json").exists()


def test_the_release_is_validated_on_the_final_stage2s_cases_and_never_on_stale_predictions(tmp_path, monkeypatch):
    from training import export, reproduce
    ids, tag = ["case_00001", "case_00002"], "bowel_walls_bowel_by_kidneys_extrarenal_pelvis"
    for folder in (tmp_path / "main", tmp_path / "w" / "data" / tag):
        for c in ids:
            (folder / c).mkdir(parents=True)
            for f in ("imaging.nii.gz", "segmentation.nii.gz"):
                (folder / c / f).write_bytes(b"")
    predicted = []
    monkeypatch.setattr(reproduce, "predict", lambda model, cases, out, device, say: predicted.append(
        ([c.image_path.parent.parent for c in cases], sorted(p.name for p in out.rglob("*.nii.gz")))))
    monkeypatch.setattr(export, "export_model", lambda *a, **k: None)
    monkeypatch.setattr(export, "sha256_file", lambda p: p.name)
    args = SimpleNamespace(quick=False, stage2_config="stage2_v2_scratch", stage2_finetune_config=None, device="cpu")
    stale = tmp_path / "w" / "predict" / "labels" / "case_00002.nii.gz"  # left by an earlier model
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    stamp, held_out = reproduce._predict_step(args, Runner(tmp_path / "w"), tmp_path / "w", tmp_path / "main",
                                              [Path("s1.pt"), Path("s2.pt")], ["case_00002"], "m")
    assert held_out == tmp_path / "w" / "data" / tag and stamp["cases"] == str(held_out)
    assert predicted == [([held_out], [])]  # its cases, and the stale label map gone
    # a finished step needs no raw cases any more
    shutil.rmtree(held_out)
    reproduce._predict_step(args, Runner(tmp_path / "w"), tmp_path / "w", tmp_path / "main",
                            [Path("s1.pt"), Path("s2.pt")], ["case_00002"], "m")
    assert len(predicted) == 1
    # a main-data stage 2 is validated on DATA, with the stamp of work folders made before the "cases" key
    stamp, held_out = reproduce._predict_step(SimpleNamespace(**{**vars(args), "stage2_config": "stage2_v2"}),
                                              Runner(tmp_path / "w2"), tmp_path / "w2", tmp_path / "main",
                                              [Path("s1.pt"), Path("s2.pt")], ["case_00001"], "m")
    assert held_out == tmp_path / "main" and set(stamp) == {"best", "val"}
    assert predicted[-1] == ([tmp_path / "main"], [])
