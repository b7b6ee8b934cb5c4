"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class MffsegError(Exception):
    """Base class for errors caused by user input (bad arguments, bad data, bad files)."""


class WeightsError(MffsegError):
    """A weights file is missing, unreadable, corrupt or of an unknown architecture."""


class DataError(MffsegError):
    """A data set, calibration file or bag is missing or malformed."""


class ImageFormatError(MffsegError):
    """An image message or buffer cannot be decoded (bad encoding, size, step, truncated data)."""


def one_line(error):
    """An exception's message on one line. YAML parse errors span several lines (with a caret under
    the offending column): they become 'line L, column C: problem'."""
    mark = getattr(error, 'problem_mark', None)
    problem = getattr(error, 'problem', None)
    if mark is not None and problem:
        return f'line {mark.line + 1}, column {mark.column + 1}: {problem}'
    return ' '.join(str(error).split())
