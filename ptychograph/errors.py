"""The one exception type for bad user input.

Every check of files, arrays and configuration raises :class:`InputError` naming the field and
the problem; the command line turns it into one line on stderr and exit code 2.
"""


class InputError(ValueError):
    """Bad user input: ``field`` names what is wrong, ``problem`` says how."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = _cut(field, 200)
        self.problem = _cut(problem, MAX_PROBLEM)
        super().__init__(f"{self.field}: {self.problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickled with both fields, so an error raised on a Dask worker arrives whole."""
        return (type(self), (self.field, self.problem))


def as_input_error(err: InputError | OSError) -> InputError:
    """``err`` as one error line: an OSError (a path the file system refuses: a name too long,
    a loop of links, an I/O error) names its file and the system's reason."""
    if isinstance(err, InputError):
        return err
    return InputError(str(err.filename or "file system"), err.strerror or str(err))


#: Longest problem text an error line carries (a value echoed from a file is cut to fit).
MAX_PROBLEM = 600


def _cut(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Diverged(RuntimeError):
    """A run's error metric or estimate became NaN or Inf at ``iteration`` (1-based): nothing
    is written, the last checkpoint (a finite state) is kept; the command line says so in one
    line and exits with :data:`DIVERGED_EXIT`."""

    def __init__(self, iteration: int, what: str) -> None:
        self.iteration = iteration
        self.what = what
        super().__init__(f"reconstruction diverged at iteration {iteration} (non-finite {what})")


#: Exit code of a run that diverged (2 is bad input, 130 an interrupt).
DIVERGED_EXIT = 3
