"""The `evalkit` command line. Each command lives in its own module, imported when it is run.

Commands parse options, create the process context, call the library and translate errors; no math
here. ``evalkit --help`` and importing this package load no command module (and so no torch).
"""

from evalkit.cli.group import main

__all__ = ["main"]
