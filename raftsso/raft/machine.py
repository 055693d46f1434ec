"""What the Raft layer needs of the state machine it replicates."""

from __future__ import annotations

from typing import Protocol, TypeVar

Result_co = TypeVar("Result_co", covariant=True)


class StateMachine(Protocol[Result_co]):
    """The replicated state machine behind a :class:`~raftsso.raft.RaftNode`.

    The contract (pysyncobj wedges every node for good if it is broken):

    * **Deterministic.** ``apply`` computes its result and the new state from the command
      and the state alone: no clock, no randomness, no I/O. Every replica applies the same
      commands in the same order and must end in the same state.
    * **Never raises.** A malformed or refused command becomes an error *result* and leaves
      the state untouched; an exception out of ``apply`` stops the Raft thread of every
      replica at the same entry.
    * **Runs on the Raft thread.** ``apply``, ``snapshot`` and ``restore`` are called by
      the Raft thread (``restore`` also once before it starts, to check a snapshot found on
      disk). They must be quick and must not call back into the :class:`RaftNode` (a
      proposal from here would deadlock). Readers on other threads must take the state
      machine's own lock.

    Methods:

    * ``apply(command, index) -> result``: apply one committed command, ``index`` being its
      Raft log index; the result is handed to whoever proposed it on this node.
    * ``snapshot() -> bytes``: the whole state, versioned, for log compaction.
    * ``restore(blob)``: replace the whole state with a snapshot; raises
      :class:`~raftsso.errors.DecodeError` if the blob is malformed (a node then refuses to
      start, or stops, rather than run on an empty state).
    """

    def apply(self, command: bytes, index: int) -> Result_co: ...

    def snapshot(self) -> bytes: ...

    def restore(self, blob: bytes) -> None: ...
