"""The two ways a command fails, each with its exit code."""


class BadInput(Exception):
    """The user's input cannot work (exit 2). The message names the problem and the fix."""

    exit_code = 2


class CannotWrite(BadInput):
    """A file could not be written: a full disk, a read-only filesystem, no permission, a name too long (exit 2,
    as other bad input: the user frees space or chooses another folder). A subclass so that training can add
    which checkpoint is intact, and the optional caches can go on without saving."""

    def __init__(self, message: str, path, errno: int | None):
        super().__init__(message)
        self.path, self.errno, self.line = path, errno, message  # line: fastai rewrites a callback's error's args


class TrainingFailed(Exception):
    """Something broke while training (exit 1); the traceback is kept in the run directory."""

    exit_code = 1


def first_line(error: BaseException, limit: int = 300) -> str:
    """An error's first line, cut at `limit` characters: what a one-line message quotes of it."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


def did_you_mean(word: str, choices) -> str:
    """' (did you mean X?)' for a near miss, else ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class TrainingInterrupted(Exception):
    """Stopped by SIGINT/SIGTERM after saving (exit 128 + the signal's number: 130, 143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
