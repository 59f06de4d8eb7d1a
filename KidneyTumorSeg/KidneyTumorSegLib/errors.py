"""Project exception types (kept tiny so every core module can import them)."""


class InputError(ValueError):
    """Bad user input (file, folder, image content); the message is one sentence saying what to do."""


class OutputError(InputError):
    """An output that cannot be written (folder not writable, disk full, name too long, ...); one sentence
    naming the path and the cause. An InputError, so the command line exits with 3 as for other bad paths."""
