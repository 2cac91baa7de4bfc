"""One exception type for every user-facing failure: its message is the one line the CLI prints."""


class CollapseError(Exception):
    """A problem with the user's input or request; the message names it and a way out."""


class VerificationError(CollapseError):
    """The transformed model does not match the requested semantics within tolerance."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
