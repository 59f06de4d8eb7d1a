"""What a run tells: progress for people (a bar on stderr) or for programs (JSON lines on stdout), warnings
and the closing lines. The Slicer module reads the JSON events (``--json-progress``)."""
from __future__ import annotations

import json
import sys


class Reporter:
    """Progress for people (a bar on stderr) or for programs (JSON lines on stdout)."""

    def __init__(self, json_lines: bool, stream=None):
        self.json_lines, self.stream = json_lines, stream or sys.stderr
        self.case = ""
        self._last = (-1, "")

    def event(self, kind: str, /, **fields) -> None:  # positional: a field may be called "kind"
        if self.json_lines:
            print(json.dumps({"event": kind, **fields}, default=str), flush=True)

    def progress(self, fraction: float, text: str) -> None:
        if self.json_lines:
            self.event("progress", case=self.case, fraction=round(fraction, 4), stage=text)
            return
        percent = int(fraction * 100)
        if (percent, text) == self._last:
            return
        self._last = (percent, text)
        bar = "#" * (percent // 4) + "." * (25 - percent // 4)
        end = "\n" if fraction >= 1.0 else ""
        if self.stream.isatty():
            self.stream.write(f"\r{self.case}: [{bar}] {percent:3d}% {text:<40}{end}")
        elif end or text != getattr(self, "_text", None):
            self.stream.write(f"{self.case}: {percent:3d}% {text}\n")
        self._text = text
        self.stream.flush()

    def say(self, text: str) -> None:
        if not self.json_lines:
            print(text, flush=True)

    def warn(self, text: str, **fields) -> None:
        """A warning (an unverified model; an output skipped, with ``kind="output_skipped"``, ``case`` and
        ``output``): a ``warning`` event, which the Slicer module shows, or a line on stderr."""
        if self.json_lines:
            self.event("warning", message=text, **fields)
        else:
            print(f"warning: {text}", file=sys.stderr, flush=True)
