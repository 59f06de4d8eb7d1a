"""Training data: discovery of KiTS19/21/23 and nnU-Net data sets, per-stage preprocessing cache, splits."""
from .cache import (default_config, foreground_stats, index_entries, load_entry, load_index, preprocess_dataset,
                    process_case, read_case)
from .heldout import HeldOutError, check_not_held_out
from .layouts import LAYOUTS, Case, DatasetError, detect_layout, discover, nnunet_label_mapping, select
from .splits import load_splits, make_splits

__all__ = ["Case", "DatasetError", "HeldOutError", "LAYOUTS", "check_not_held_out", "default_config",
           "detect_layout", "discover", "foreground_stats", "index_entries", "load_entry", "load_index",
           "load_splits", "make_splits", "nnunet_label_mapping", "preprocess_dataset", "process_case",
           "read_case", "select"]
