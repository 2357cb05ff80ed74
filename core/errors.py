"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class BenchError(Exception):
    """Bad input or state the user can fix; the message names the problem and the valid choices."""

    exit_code = 2
