"""Errors a user can fix, at the bottom of the package (it imports nothing).

`UserError` is bad input, not a bug: a missing or damaged file, a config that cannot work, a
checkpoint of another model. Its message names the problem and what to do, so the CLI
prints it as one line and exits 1 (`--verbosity=1` or VIDEOMAR_TRACEBACK=1 adds the
traceback). It is a `ValueError`, so code that catches those keeps working.
"""


class UserError(ValueError):
  """Bad input the user can fix; the message names it and says what to do."""


class ConfigError(UserError):
  """A config value (or combination) that cannot work; the message names the key."""
