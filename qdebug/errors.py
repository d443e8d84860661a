"""User-facing errors: one line naming the file, the place and the fix."""

from __future__ import annotations


class QDebugError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits non-zero."""

    exit_code = 2

    def __init__(self, problem: str, *, file: str | None = None, where: str | None = None,
                 fix: str | None = None) -> None:
        self.problem = problem
        self.file = file
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Render as `file:where: problem (fix: ...)` on a single line."""
        loc = ""
        if self.file:
            loc = str(self.file)
            if self.where:
                loc += f":{self.where}"
            loc += ": "
        elif self.where:
            loc = f"{self.where}: "
        text = f"{loc}{self.problem}"
        if self.fix:
            text += f" (fix: {self.fix})"
        return " ".join(text.split())


class FormatError(QDebugError):
    """A vendor file (calibration, cfg) that does not parse or contradicts the model."""


class DataError(QDebugError):
    """Input data that cannot be loaded or does not match the model."""


class ModelError(QDebugError):
    """A model file that cannot be loaded or analysed."""


class NumericError(QDebugError):
    """NaN/Inf or other numeric failure found in a run."""
