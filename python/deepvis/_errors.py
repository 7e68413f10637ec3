"""The exceptions deepvis raises; all derive from `deepvis.Error`."""


class Error(Exception):
    """Base of every deepvis error. The message is one line, as the CLI prints it."""


class InvalidArgument(Error, ValueError):
    """A bad argument: an unknown layer or model, a malformed objective, a bad option."""


class NotFound(Error, FileNotFoundError):
    """A file that was named is not there."""


class Interrupted(Error):
    """A render was asked to stop (raised internally; callers see KeyboardInterrupt)."""
