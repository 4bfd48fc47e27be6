"""The one exception type a person can act on.

`UserError` is for mistakes in what the user gave us: a config key, a file, a data
record. `ctjax.main` prints its message as one line and exits with status 2, with
no traceback, so the message must name the key, file or record and say what to do.
"""


class UserError(Exception):
  """A bad config value, a missing file or a malformed record; exit status 2."""
