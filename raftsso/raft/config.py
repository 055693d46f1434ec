"""What a Raft member needs to know, and nothing else (the node's wiring builds it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raftsso.config import Peer, RaftTimings
from raftsso.errors import ConfigError
from raftsso.limits import (
    DEFAULT_PEER_MAX_CONNECTIONS,
    DEFAULT_PEER_MAX_HANDSHAKES,
    DEFAULT_PEER_MAX_PER_SOURCE,
)

CLUSTER_SECRET_SIZE = 32



@dataclass(frozen=True)
class RaftConfig:
    """One member's Raft settings.

    ``members`` are the members known at start, this node included (later membership
    changes come through the ``directory`` callable given to the
    :class:`~raftsso.raft.RaftNode`). ``data_dir`` holds ``raft.journal`` (with its term
    and vote) and ``raft.snapshot``. ``cluster_secret`` keys pysyncobj's own link
    encryption (mandatory, also under peer TLS). With ``peer_tls``, peers authenticate by
    the node certificates ``cert``/``key`` of the cluster CA ``ca_cert``; the
    ``peer_max_*`` caps bound what the Raft port accepts from anyone before that.
    ``source`` names where the settings came from (a node.toml), for messages.
    """

    node_id: str
    raft_address: str
    members: tuple[Peer, ...]
    data_dir: Path
    cluster_secret: bytes = field(repr=False)
    timings: RaftTimings = field(default_factory=RaftTimings)
    peer_tls: bool = True
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # The Raft port speaks only to the other members, so its caps ([limits] peer_max_*)
    # are small: they bound what a stranger who reaches the port can hold.
    peer_max_connections: int = DEFAULT_PEER_MAX_CONNECTIONS
    peer_max_handshakes: int = DEFAULT_PEER_MAX_HANDSHAKES
    peer_max_per_source: int = DEFAULT_PEER_MAX_PER_SOURCE
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.cluster_secret) != CLUSTER_SECRET_SIZE:
            raise ConfigError("the cluster secret must be 32 random bytes")
        if self.peer_tls and None in (self.ca_cert, self.cert, self.key):
            raise ConfigError("peer TLS needs the CA certificate and this node's "
                              "certificate and key")
        for name in ("peer_max_connections", "peer_max_handshakes", "peer_max_per_source"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")

    @property
    def peers(self) -> tuple[Peer, ...]:
        """The members known at start, this node excluded."""
        return tuple(p for p in self.members if p.id != self.node_id)
