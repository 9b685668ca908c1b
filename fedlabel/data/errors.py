"""The one exception type of :mod:`fedlabel.data`."""


class DataError(ValueError):
    """Unreadable or invalid data; the message names the file (or dataset) and the problem."""
