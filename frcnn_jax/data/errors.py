"""The one exception type for problems with a user's dataset, caught by the entry scripts."""


class DataError(ValueError):
    """A dataset problem the user must fix (missing folder or file, malformed annotation...).

    The message is one line that names the file, field or value that is wrong; entry scripts
    print it instead of a traceback. Each source subclasses it (``VocDirError``,
    ``CocoJsonError``) so that a caller can catch every source's errors at once.
    """
