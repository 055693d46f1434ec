"""Node settings a test changes, as typed values written through the TOML writer.

::

    NodeOptions(raft=RaftTimings(log_compaction_min_entries=8), peer_tls=False)

:func:`configure_node` merges the options into a ``node.toml`` with
:func:`raftsso.config.update_toml` (parsed and dumped whole, 0600, atomically; never edited
as text) and loads the result with :func:`raftsso.config.load_node_config`, so a setting the
node would refuse fails here, in the test's setup, not in a node log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftsso.config import NodeConfig, RaftTimings, load_node_config, update_toml
from raftsso.errors import ConfigError
from raftsso.fsutil import atomic_write


@dataclass(frozen=True)
class NodeOptions:
    """node.toml settings; None keeps what ``raftsso init`` wrote.

    Each field is the node.toml key of the same name (see docs/operations.md).
    """

    raft: RaftTimings | None = None  # the whole [raft] table
    peer_tls: bool | None = None
    rotation_grace: float | None = None
    client_window: float | None = None
    max_frame: int | None = None
    idle_timeout: float | None = None
    read_timeout: float | None = None
    audit_log: Path | None = None
    rotation_period: float | None = None
    max_encryptions: int | None = None
    # Tables that other changes add to node.toml ([limits], [backup]); merged key by key.
    limits: Mapping[str, Any] | None = None
    backup: Mapping[str, Any] | None = None

    def changes(self) -> dict[str, Any]:
        """The node.toml keys these options set."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = dataclasses.asdict(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


def configure_node(node_toml: Path, options: NodeOptions) -> NodeConfig:
    """Write ``options`` into ``node_toml``; return the configuration the node will load.

    Options the node would refuse raise its ``ConfigError`` and leave the file as it was.
    """
    before = node_toml.read_bytes()
    update_toml(node_toml, options.changes())
    try:
        return load_node_config(node_toml)
    except ConfigError:
        atomic_write(node_toml, before)
        raise
