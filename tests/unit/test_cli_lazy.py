"""Lazy imports keep the CLI and the package whole (issue 16, item 6): every command is
still reachable and listed by ``--help``, every public name of ``raftsso`` still
imports, and the cheap paths really skip the heavy modules."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import click
from click.testing import CliRunner

import raftsso
from raftsso_cli.main import COMMANDS, cli


def test_every_command_resolves_and_help_lists_them_all() -> None:
    ctx = click.Context(cli)
    assert set(cli.list_commands(ctx)) == set(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command), name
    out = CliRunner().invoke(cli, ["--help"]).output
    listed = out.split("Commands:", 1)[1]
    for name in COMMANDS:
        assert f"\n  {name} " in listed, name


def test_every_public_name_imports_and_the_version_is_the_packages() -> None:
    for name in raftsso.__all__:
        assert getattr(raftsso, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from raftsso import *", namespace)  # the star import itself
    assert set(raftsso.__all__) <= set(namespace)
    assert raftsso.__version__ == importlib.metadata.version("raftsso")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True)
    return set(json.loads(done.stdout.decode().splitlines()[-1]))


def test_the_cheap_paths_skip_the_heavy_modules() -> None:
    heavy = {"cryptography", "raftsso.client", "raftsso.store", "raftsso.backup", "asyncio"}
    loaded = _modules_after("import raftsso.errors, raftsso_cli.main")
    assert not heavy & loaded, heavy & loaded
    # status needs the TLS client, the admin.toml reader and the status messages: not
    # certificates or Argon2id, nor every other op's messages, a node's limits and seal
    # settings (logging, ctypes), the init command's seal kinds, a thread pool, random.
    loaded = _modules_after("import raftsso_cli.main, raftsso_cli.admin")
    skipped = {"cryptography", "raftsso.backup", "asyncio", "raftsso.protocol.messages",
               "raftsso.limits", "raftsso.seal", "raftsso.known_stores", "raftsso_cli.lifecycle",
               "logging", "tomli_w", "concurrent.futures", "secrets", "random"}
    assert not skipped & loaded, skipped & loaded


def test_the_console_script_answers_version_without_click_and_runs_the_rest() -> None:
    script = importlib.metadata.entry_points(group="console_scripts")["raftsso"]
    assert script.value == "raftsso_cli.launch:main"
    probe = ("import sys\nsys.argv = ['raftsso', '--version']\n"
             "from raftsso_cli.launch import main\nmain()")
    loaded = _modules_after(probe)
    assert not {"click", "raftsso.errors"} & loaded
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True)
    assert done.stdout.decode().splitlines()[0] == f"raftsso, version {raftsso.__version__}"
    # Anything else is the click CLI: the same line for an eager --version among other
    # arguments, and a usage error keeps its exit code 2.
    def launch(*args: str) -> subprocess.CompletedProcess[bytes]:
        code = (f"import sys\nsys.argv = ['raftsso', *{list(args)!r}]\n"
                "from raftsso_cli.launch import main\nmain()")
        return subprocess.run([sys.executable, "-c", code], capture_output=True)

    assert launch("--version", "status").stdout == done.stdout
    usage = launch("--no-such-option")
    assert usage.returncode == 2 and b"Usage: raftsso" in usage.stderr
