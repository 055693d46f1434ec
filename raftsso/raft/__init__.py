"""The hardened Raft layer: the only package that imports pysyncobj.

pysyncobj 0.3.17 gives a working Raft core; this package closes what it leaves open
(DESIGN.md section 4) behind a small typed surface: :class:`RaftNode` (one member),
:class:`RaftConfig` (what it needs to know) and :class:`StateMachine` (what it replicates).
Nothing of pysyncobj (objects, failure integers) leaves the package.

* ``member``: :class:`RaftNode`; proposals with a timeout whose failures map to "definitely
  not applied" (:class:`~raftsso.errors.NotLeader`) or "unknown"
  (:class:`~raftsso.errors.OutcomeUnknown`); a leader steps down after
  ``leader_fallback_timeout`` without a majority (pysyncobj's default is 30 s).
* ``journal``: the fsynced, CRC-checked journal; ``meta``: its term and vote, written in
  place into two pre-opened slots (no new file descriptor needed at run time).
* ``snapshot``: the msgpack snapshot file (no pickle, no fork), written atomically.
* ``storage``: a failed fsync stops the node; running out of descriptors does not.
* ``hardening``: restricted unpickler, peer frame cap, the patches and the version check.
* ``transport``: pysyncobj transports without read-only members or utility commands.
* ``elections``: pre-vote and leader stickiness (elections only when needed).
* ``peer_links``: mutual TLS between members (the default), in its own thread.
* ``config`` and ``machine``: :class:`RaftConfig` and the :class:`StateMachine` contract.
"""

from raftsso.raft.config import RaftConfig
from raftsso.raft.machine import StateMachine
from raftsso.raft.member import ROLE_NAMES, PeerView, RaftNode

__all__ = ["ROLE_NAMES", "PeerView", "RaftConfig", "RaftNode", "StateMachine"]
