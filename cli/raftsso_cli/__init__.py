"""The ``raftsso`` command line (click only; installed as ``raftsso_cli``)."""
