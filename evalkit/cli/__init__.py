"""The `evalkit` command line. Each command lives in its own module and registers on `main`.

Commands parse options, resolve the device, call the library and translate errors; no math here.
"""

from evalkit.cli.group import main

# Importing a command module registers its commands on `main`. One line per module.

__all__ = ["main"]
