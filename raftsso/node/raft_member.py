"""What the node needs of its Raft member: a narrow protocol, so the member is passed in.

The production member is :class:`raftsso.raft.RaftNode`, built by the wiring code
(:func:`raftsso.runner.build_node`); tests may pass a member that ticks without sockets.
:class:`RaftHooks` is what the member calls back (role changes, the member directory): it
exists before the member (which needs it) and is bound to the node after (which needs the
member).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from raftsso.config import NodeConfig, Peer
from raftsso.protocol.commands import Outcome

if TYPE_CHECKING:
    from raftsso.node import Node


class PeerInfo(Protocol):
    """This node's view of one peer (``raftsso.raft.PeerView``)."""

    @property
    def id(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    @property
    def last_contact(self) -> float | None: ...  # seconds since a message from the peer

    @property
    def match_index(self) -> int | None: ...


class RaftMember(Protocol):
    """One replica's Raft member, as the node uses it (``raftsso.raft.RaftNode``)."""

    @property
    def started(self) -> bool: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> str | None: ...

    @property
    def role(self) -> str: ...

    @property
    def term(self) -> int: ...

    @property
    def has_quorum(self) -> bool: ...

    @property
    def commit_index(self) -> int: ...

    @property
    def last_applied(self) -> int: ...

    @property
    def leader_commit_index(self) -> int: ...

    @property
    def last_log_index(self) -> int: ...

    def peers(self) -> Sequence[PeerInfo]: ...

    def raft_addresses(self) -> set[str]:
        """The Raft configuration now (this node included); only once :attr:`started`."""
        ...

    def propose(self, command: bytes, timeout: float) -> Outcome:
        """The applied outcome; NotLeader (certainly not appended) or OutcomeUnknown."""
        ...

    def submit(self, command: bytes, ended: Callable[[Outcome | Exception], None]) -> None:
        """:meth:`propose` without waiting: ``ended`` gets the outcome (or the exception
        :meth:`propose` would raise) in the Raft thread, at most once; maybe never."""
        ...

    def change_membership(self, add: bool, raft_address: str, timeout: float,
                          node_id: str | None = None) -> bool:
        """True once the change committed; False: refused (one change at a time)."""
        ...

    def transfer_leadership(self, node_id: str, timeout: float) -> bool:
        """True: the request went out (the caller polls :attr:`leader_id`); False: refused."""
        ...

    def compact(self, timeout: float) -> int | None:
        """Snapshot and cut the journal now; the applied index the files start from, or
        None if not done within ``timeout``."""
        ...

    def reload_certificate(self) -> bool:
        """Load this node's certificate again for new peer links (SIGHUP); False without
        peer TLS."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class RaftHooks:
    """The callbacks a Raft member is built with, forwarded to the node once it exists."""

    def __init__(self, cfg: NodeConfig) -> None:
        self._cfg = cfg
        self._node: Node | None = None

    def bind(self, node: Node) -> None:
        self._node = node

    def role_changed(self, old: str, new: str) -> None:
        if self._node is not None:
            self._node.role_changed(old, new)

    def members(self) -> list[Peer]:
        """Who is who (ids, addresses): ``init``'s members until the node is bound."""
        if self._node is None:
            return list(self._cfg.members)
        return self._node.membership.members()
