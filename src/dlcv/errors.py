"""The one exception type the CLI turns into a clear message and a non-zero exit code."""


class DlcvError(RuntimeError):
    """Bad input or a state the user must fix; the message names the file and what is wrong."""
