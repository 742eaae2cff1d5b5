"""Errors a user can cause. Tools print them as one line and exit with code 2."""


class UserError(Exception):
    """A problem with the user's input (file, option, checkpoint) that names the fix."""
