"""The ``raftsso`` console script.

``raftsso --version`` is what scripts and package managers run to ask "is it installed, and
which one": it is answered here, before click and the error tree are imported (about 30 ms
of a 60 ms start). Every other command line goes to :func:`raftsso_cli.main.main`, which
prints the same ``--version`` line through click when the flag comes with other arguments.
A plain ``raftsso -c FILE status`` is answered without click too
(:mod:`raftsso_cli.status_view`, the same text and exit codes).
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from raftsso import __version__  # a constant; the package itself loads lazily

        sys.stdout.write(f"raftsso, version {__version__}\n")
        return
    from raftsso_cli.status_view import fast_status_config

    config = fast_status_config(sys.argv[1:])
    if config is not None:
        from raftsso_cli.status_view import run_status

        sys.exit(run_status(config))
    from raftsso_cli.main import main as run

    run()
