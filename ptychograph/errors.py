"""The one exception type for bad user input.

Every check of files, arrays and configuration raises :class:`InputError` naming the field and
the problem; the command line turns it into one line on stderr and exit code 2.
"""


class InputError(ValueError):
    """Bad user input: ``field`` names what is wrong, ``problem`` says how."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


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
