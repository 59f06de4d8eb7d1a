"""The real-anatomy painter's command-line switches (``training.synthetic --anatomy``) and the settings they make.

Each switch is a ``SynthConfig`` field of the same name (``--bowel-walls`` -> ``bowel_walls``). The help texts
are argparse format strings (``%%`` for a percent sign).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from .synth_real import RealSynthConfig

# The switches; all off, the cases are those of the v2 data.
PAINTER_OPTIONS = {
    "--bowel-walls": "procedural small-bowel loops get a wall around their contents, enhancing in contrast phases "
                     "(default: uniform loops)",
    "--bowel-by-kidneys": "1-3 more procedural small-bowel loops against the front of each kidney, where the map "
                          "labels no small bowel",
    "--extrarenal-pelvis": "70%% of the kidneys get a dilated renal pelvis bulging out of the hilum, with calyces",
    "--large-organs": "35%% of the spleens and 20%% of the livers grown 1.15-1.45 times downward and half as much "
                      "forward and medially, reaching down beside the kidneys",
    "--collapsed-loops": "40%% of the procedural small-bowel loops collapsed: flat bands of wall-density soft "
                         "tissue, no lumen",
    "--contrast-dose": "each contrast-enhanced case's enhancement (HU above unenhanced) times one factor from "
                       "0.8-1.5: the spread of iodine dose and timing; bright kidneys of 250-350 HU",
    "--packed-bowel": "in 60%% of the cases the fat in front of the kidneys is filled with packed small-bowel "
                      "loops (distended, collapsed or mesenteric fat) with mesenteric vessels between them, where "
                      "the map labels no small bowel",
    "--lesion-contrast": "in a contrast-enhanced case a tumor within 40 HU of the renal cortex is moved 40-70 HU "
                         "below it (unenhanced and random-intensity cases unchanged)",
    "--organ-contact": "in 50%% of the cases the liver and spleen close the fat planes up to 2-6 mm thick (up to "
                       "1 mm more across a finer axis) between them and a kidney, tumor or cyst: organs that touch "
                       "a kidney with no fat plane (synth_contact)",
    "--extra-cysts": "50%% of the kidneys get 1-2 simple cysts 8-36 mm across, from wholly inside the kidney to "
                     "mostly bulging out of it (synth_cysts)",
}


def real_config(spacing=None, **painter: bool) -> RealSynthConfig:
    """The real-anatomy generator's settings: the defaults, with the working spacing range and the painter's
    switches (``SynthConfig`` fields named as in PAINTER_OPTIONS, e.g. ``bowel_walls=True``) as asked on the
    command line; an unknown name is a TypeError."""
    config = RealSynthConfig(**({"spacing": tuple(spacing)} if spacing else {}))
    return replace(config, scanner=replace(config.scanner, **painter))


def args_config(args) -> RealSynthConfig:
    """``real_config`` from the command line's options."""
    return real_config(args.spacing, **{dest(flag): getattr(args, dest(flag)) for flag in PAINTER_OPTIONS})


def dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def add_painter_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("real-anatomy painter options (with --anatomy; each off by default, as the "
                                 "kits23-anatomy-cpu-v2 data)")
    for flag, text in PAINTER_OPTIONS.items():
        group.add_argument(flag, action="store_true", help=text)
