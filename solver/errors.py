"""Input errors: what a user sent that cannot be fitted, naming the field at fault.

Every fault a user can cause (formula, column, value, source) is raised as an
``InputError`` with ``field`` set to the formula term, column or option at fault;
the CLI turns it into exit status 2 with one line, the server into
``INVALID_ARGUMENT``.  Anything else escaping the solver is a bug.
"""

from __future__ import annotations


class InputError(ValueError):
    """A fault in what the user supplied; ``field`` names the term, column or option."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class FormulaError(InputError):
    """The formula text cannot be parsed or refers to something that is not there."""


class DataError(InputError):
    """The data cannot support the model: wrong type, no variation, too few rows."""
