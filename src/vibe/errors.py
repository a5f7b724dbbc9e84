"""Errors that the CLI turns into one-line messages and exit code 2."""


class VibeError(Exception):
    """Any error vibe reports to a user (not a bug): one line, exit code 2."""


class InputError(VibeError):
    """A file or argument is malformed. The message names the file and the problem."""

    def __init__(self, source: object, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
