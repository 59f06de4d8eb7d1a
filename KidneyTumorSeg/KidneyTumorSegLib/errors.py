"""Project exception types (kept tiny so every core module can import them)."""


class InputError(ValueError):
    """Bad user input (file, folder, image content); the message is one sentence saying what to do."""


class OutputError(InputError):
    """An output that cannot be written (folder not writable, disk full, name too long, ...); one sentence
    naming the path and the cause. An InputError, so the command line exits with 3 as for other bad paths."""


class OutputSkipped(InputError):
    """An optional output this input cannot support (a DICOM SEG of a series without FrameOfReferenceUID, ...):
    the message is one line saying which output and why. The run's other outputs stand; the command line
    writes them, says the line as a warning and exits with 5."""
