"""Project exception types (kept tiny so every core module can import them)."""


class InputError(ValueError):
    """Bad user input (file, folder, image content); the message is one sentence saying what to do."""
