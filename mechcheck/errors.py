"""The one exception type that reaches the user as a one-line message."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits 2."""
