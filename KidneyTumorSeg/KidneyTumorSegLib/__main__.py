"""``python -m KidneyTumorSegLib``: the `kidney-tumor-seg` command (signal handling before heavy imports)."""
import sys

from KidneyTumorSegLib.entry import main

if __name__ == "__main__":
    sys.exit(main())
