"""One real-anatomy synthetic case made through the command line, for the painter options' tests."""
import json


def generate_case(shared_data, out, seed, flags=()):
    """(its synthetic.json entry, its folder): KiTS23 case_00534 in FLARE22 map 0001 at 4 mm, with ``flags``."""
    from training.synthetic import main
    assert main(["--kits23", str(shared_data / "kits23" / "labels"), "-o", str(out), "--cases", "case_00534",
                 "--anatomy", str(shared_data / "anatomy" / "flare22" / "FLARE22_Tr_0001.nii.gz"),
                 "--spacing", "4", "4", "--seed", str(seed), *flags]) == 0
    (entry,) = json.loads((out / "synthetic.json").read_text())["cases"].values()
    return entry, out / "case_00534_FLARE22Tr0001"
