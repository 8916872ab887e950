"""The one exception a user sees: the CLI prints its message as a single line and exits 2."""


class TunelabError(Exception):
    """A problem with the user's input (file, row, key, model path) rather than a bug."""

    keeps_run_dir = False  # input errors leave no run directory behind
