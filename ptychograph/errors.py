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
