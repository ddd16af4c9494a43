"""The `evalkit` command line. Each command lives in its own module and registers on `main`.

Commands parse options, resolve the device, call the library and translate errors; no math here.
"""

from evalkit.cli.group import main

# Importing a command module registers its commands on `main`. One line per module.
from evalkit.cli import info_cmd  # noqa: E402,F401
from evalkit.cli import score_cmd, features_cmd, weights_cmd, ref_cmd  # noqa: E402,F401
from evalkit.cli import presets_cmd  # noqa: E402,F401
from evalkit.cli import report_cmd  # noqa: E402,F401
from evalkit.cli import sample_cmd  # noqa: E402,F401
from evalkit.cli import sweep_cmd  # noqa: E402,F401
from evalkit.cli import refbuild_cmd, demo_cmd  # noqa: E402,F401

__all__ = ["main"]
