"""The one base class for failures a user can cause and fix.

Its message is a single readable line naming what is wrong and where; the CLI prints it without a
traceback, and tasks let it fail the run with that line as the reason.
"""


class EcomError(Exception):
    """A user-fixable failure: bad input, bad configuration, or an environment not in the needed state."""
