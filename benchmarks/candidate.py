"""Every figure a candidate model is judged by, in two commands: the held-out synthetic sets, then the benchmarks.

  python benchmarks/candidate.py sets --train-data DATA -o SETS
  python benchmarks/candidate.py measure --model MODEL --sets SETS -o OUT [--baseline NAME BASE_OUT]

``sets`` paints the three held-out synthetic sets of the model card (``Resources/Models/README.md``):
- SETS/test: 24 cases, seed 7, from KiTS23 cases that DATA (the training set, a folder with synthetic.json)
  does not use, painted into FLARE22 maps 0043-0050, which no training set uses (``training.synthetic
  --exclude DATA``); it gives the held-out tumor, cyst and organ figures;
- SETS/conf: 12 cases, seed 99, painted into FLARE22 maps 0049-0050; its true and false lesions choose the
  confidence threshold (``benchmarks/confidence_threshold.py``);
- SETS/contact: SETS/test painted again with ``--organ-contact`` (decision 99): the kidney meets the liver or
  spleen with no fat between in about half of its cases (``benchmarks/contact_set.py``; reported, not a gate).
The first two are made as the card's figures were (no painter options), so a figure measured on them compares
with the card's. ``training.synthetic`` gives the same cases for any number of workers.

``measure`` runs, for MODEL ('default', a registered name or a model folder such as ``training.export``'s
``WORK/release/NAME``): ``real_ct.py`` (OUT/real), ``model_card.py`` on SETS/test (OUT/card),
``confidence_threshold.py`` on SETS/conf (OUT/conf) and ``lesion_errors.py`` on SETS/test (OUT/lesion_errors),
then ``compare_models.py`` (OUT/compare.md, made anew each time), with ``--baseline`` against another model's
OUT and its ship rule (decision 54; ``--outside-at-most`` and ``--tumor-dice-at-least`` give the bounds of a rule
that allows for seed noise, as decisions 85 and 86 do), then ``model_card.py``, ``lesion_errors.py`` and
``contact_set.py`` on SETS/contact (OUT/contact; reported, not part of the rule). A step whose output file exists is not run again, so an
interrupted evaluation resumes where it stopped; OUT/candidate.json records the model and sets, and an OUT of
another model is refused. ``--again`` reruns every step. Each step's output is also kept in OUT/<step>.log.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FLARE = "anatomy/flare22/FLARE22_Tr_{:04d}.nii.gz"
TEST_MAPS = range(43, 51)  # FLARE22 maps no training set uses (decision 26)
CONF_MAPS = (49, 50)
TEST_CASES, TEST_SEED = 24, 7
CONF_CASES, CONF_SEED = 12, 99
GATE_STEPS = ("real", "card", "conf", "lesion_errors")  # the figures compare_models.py judges a candidate by


def set_commands(train_data: Path, out: Path, data: Path = SHARED, workers: int = 2) -> List[Tuple[str, List[str]]]:
    """(name, argv) of the two ``training.synthetic`` runs; argv without the interpreter."""
    def paint(maps, n, seed, folder):
        return ["-m", "training.synthetic", "--kits23", str(data / "kits23" / "labels"), "-o", str(out / folder),
                "-n", str(n), "--seed", str(seed), "--workers", str(workers),
                "--anatomy", *[str(data / FLARE.format(m)) for m in maps]]
    return [("test", paint(TEST_MAPS, TEST_CASES, TEST_SEED, "test") + ["--exclude", str(train_data)]),
            ("conf", paint(CONF_MAPS, CONF_CASES, CONF_SEED, "conf")),
            ("contact", paint(TEST_MAPS, TEST_CASES, TEST_SEED, "contact") + ["--exclude", str(train_data),
                                                                            "--organ-contact"])]


def measure_commands(model: str, sets: Path, out: Path, device: str = "cpu", name: Optional[str] = None,
                     baseline: Optional[Tuple[str, Path]] = None, rule: Sequence[str] = ()
                     ) -> List[Tuple[str, Path, List[str]]]:
    """(step, the file that says it is done, argv) of each benchmark, in order: the gate figures, their
    comparison, then the contact set's (reported, not a gate: its failure cannot keep compare.md from being made)."""
    bench = REPO / "benchmarks"
    common = ["--model", model, "--device", device]
    contact = out / "contact"
    steps = [("real", out / "real" / "real_ct.json",
              [str(bench / "real_ct.py"), *common, "-o", str(out / "real")]),
             ("card", out / "card" / "registry_metrics.json",
              [str(bench / "model_card.py"), *common, "--synthetic", str(sets / "test"), "-o", str(out / "card")]),
             ("conf", out / "conf" / "confidence_threshold.json",
              [str(bench / "confidence_threshold.py"), *common, "--synthetic", str(sets / "conf"),
               "-o", str(out / "conf")]),
             ("lesion_errors", out / "lesion_errors" / "lesion_errors.md",
              [str(bench / "lesion_errors.py"), *common, "--synthetic", str(sets / "test"),
               "-o", str(out / "lesion_errors")])]
    compare = [str(bench / "compare_models.py"), "--model", name or Path(model).name, *_figures(out)]
    if baseline is not None:
        compare += ["--model", baseline[0], *_figures(baseline[1]), "--baseline", baseline[0], *rule]
    steps.append(("compare", out / "compare.md", compare))
    steps += [("contact_card", contact / "card" / "registry_metrics.json",
              [str(bench / "model_card.py"), *common, "--synthetic", str(sets / "contact"),
               "-o", str(contact / "card")]),
             ("contact_lesions", contact / "lesion_errors" / "lesion_errors.md",
              [str(bench / "lesion_errors.py"), *common, "--synthetic", str(sets / "contact"),
               "-o", str(contact / "lesion_errors")]),
             ("contact", contact / "contact.json",
              [str(bench / "contact_set.py"), "--set", str(sets / "contact"), "--card", str(contact / "card"),
               "--lesion-errors", str(contact / "lesion_errors"), "-o", str(contact / "contact.json")])]
    return steps


def _figures(out: Path) -> List[str]:
    return [str(out / "real"), str(out / "card"), str(out / "conf"), str(out / "lesion_errors")]


def _run(name: str, argv: Sequence[str], log: Path, capture_to: Optional[Path] = None) -> None:
    """Run one step with this interpreter; its output goes to ``log`` (and ``capture_to``, written only on success)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {' '.join(argv)}", flush=True)
    with open(log, "w", encoding="utf-8") as f:  # written as it runs: `tail -f` shows a long step's progress
        code = subprocess.run([sys.executable, *argv], cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    output = log.read_text(encoding="utf-8", errors="replace")
    if code != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise SystemExit(f"[{name}] failed (exit {code}); its output is in {log}:\n{tail}")
    if capture_to is not None:
        capture_to.write_text(output, encoding="utf-8")


def _same_candidate(out: Path, what: dict, again: bool) -> None:
    """Resuming skips finished steps: refuse an OUT that holds another model's (or other sets') figures."""
    stamp = out / "candidate.json"
    if stamp.is_file() and not again:
        before = json.loads(stamp.read_text(encoding="utf-8"))
        if before != what:
            raise SystemExit(f"{out} holds the figures of {before}, not of {what}; give another -o, or --again to "
                             "measure everything anew there")
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(what, indent=1), encoding="utf-8")


def sets(args) -> int:
    if not (args.train_data / "synthetic.json").is_file():
        raise SystemExit(f"--train-data {args.train_data}: no synthetic.json there; give the training set's folder "
                         "(made by training.synthetic), so that the test set leaves out its KiTS23 cases")
    for name, argv in set_commands(args.train_data, args.output, args.data, args.workers):
        if (args.output / name / "synthetic.json").is_file() and not args.again:
            print(f"[{name}] {args.output / name} is already made; --again to paint it anew")
            continue
        _run(name, argv, args.output / f"{name}.log")
    return 0


def measure(args) -> int:
    for folder in ("test", "conf", "contact"):
        if not (args.sets / folder / "synthetic.json").is_file():
            raise SystemExit(f"--sets {args.sets}: no {folder}/synthetic.json; make the sets first: "
                             f"python benchmarks/candidate.py sets --train-data DATA -o {args.sets}")
    if (args.outside_at_most is not None or args.tumor_dice_at_least is not None) and not args.baseline:
        raise SystemExit("--outside-at-most and --tumor-dice-at-least are bounds of the ship rule: give --baseline")
    baseline, name = None, args.name or Path(args.model).name
    if args.baseline:
        baseline = (args.baseline[0], Path(args.baseline[1]).resolve())
        if baseline[0] == name:
            raise SystemExit(f"--baseline {baseline[0]}: the candidate has that name too; give it another (--name)")
        gate = [s for s in measure_commands("x", args.sets, baseline[1]) if s[0] in GATE_STEPS]
        missing = [f for _, f, _ in gate if not f.is_file()]
        if missing:
            raise SystemExit(f"--baseline {args.baseline[0]}: {baseline[1]} lacks {', '.join(map(str, missing))}; "
                             f"run measure for that model with -o {baseline[1]} first")
    _same_candidate(args.output, {"model": args.model, "sets": str(args.sets), "device": args.device}, args.again)
    bounds = (("outside-at-most", args.outside_at_most), ("tumor-dice-at-least", args.tumor_dice_at_least))
    rule = [f"--{flag}={value}" for flag, value in bounds if value is not None]
    for step, done, argv in measure_commands(args.model, args.sets, args.output, args.device, name, baseline, rule):
        if step != "compare" and done.is_file() and not args.again:  # the comparison is cheap: always made anew
            print(f"[{step}] done before ({done}); --again to rerun")
            continue
        _run(step, argv, args.output / f"{step}.log", capture_to=done if step == "compare" else None)
    print((args.output / "compare.md").read_text(encoding="utf-8"))
    contact = args.output / "contact" / "contact.json"
    if contact.is_file():
        print(f"Contact set ({contact}):", json.dumps(json.loads(contact.read_text(encoding="utf-8"))))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sets", help="paint the held-out test, confidence and contact sets")
    s.add_argument("--train-data", type=Path, required=True, help="the training set (folder with synthetic.json)")
    s.add_argument("-o", "--output", type=Path, required=True)
    s.add_argument("--data", type=Path, default=SHARED, help="the shared data folder (default: ../shared/data)")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--again", action="store_true", help="paint a set again even if it exists")
    m = sub.add_parser("measure", help="run every benchmark for one model")
    m.add_argument("--model", required=True, help="'default', a registered model name, or a model folder")
    m.add_argument("--sets", type=Path, required=True, help="the folder `sets` wrote")
    m.add_argument("-o", "--output", type=Path, required=True)
    m.add_argument("--device", default="cpu")
    m.add_argument("--name", help="the candidate's column name (default: the model folder's name)")
    m.add_argument("--baseline", nargs=2, metavar=("NAME", "OUT"), help="compare with a model measured into OUT")
    m.add_argument("--again", action="store_true", help="rerun steps whose output exists")
    m.add_argument("--outside-at-most", type=float, metavar="ML", help="with --baseline: rule (a) becomes at most "
                   "ML mL of real-CT false lesion outside the kidneys (default: less than the baseline)")
    m.add_argument("--tumor-dice-at-least", type=float, metavar="D", help="with --baseline: rule (d) becomes a "
                   "held-out tumor Dice of at least D (default: the baseline's)")
    args = p.parse_args(argv)
    for key in ("train_data", "output", "data", "sets"):  # the steps run in the repository: absolute paths
        if getattr(args, key, None) is not None:
            setattr(args, key, getattr(args, key).resolve())
    if args.command == "measure" and Path(args.model).exists():
        args.model = str(Path(args.model).resolve())
    return sets(args) if args.command == "sets" else measure(args)


if __name__ == "__main__":
    sys.exit(main())
