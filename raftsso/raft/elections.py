"""Elections only when needed: pre-vote and leader stickiness for pysyncobj 0.3.17.

pysyncobj starts an election (its ``_onTick``: term + 1, ``request_vote`` to everyone) as
soon as a follower's election timer runs out, and any member that receives a higher term
in a ``request_vote`` adopts it (its ``__onMessageReceived``), the leader included. So a
follower that was paused (SIGSTOP, a long GC, a full disk queue) or cut off for longer than
an election timeout comes back with a higher term and deposes a healthy leader. The Raft
thesis fixes both halves (sections 9.6 and 4.2.3); this module adds them on top of
pysyncobj, through :class:`Elections`, which the member's tick and transport call:

* **Pre-vote.** When the timer runs out, the node first asks the others, without changing
  its term, whether they *would* vote for it in the next term (``rsso_pre_vote``). A member
  says yes only if it has not heard from a live leader within the minimum election
  timeout, its own term is lower than the proposed one and the asker's log is at least as
  up to date as its own. Only with a majority of yeses does pysyncobj's own election run;
  otherwise the node stays a follower in its term and asks again after another timeout.
  The node forgets its leader when a round starts (it heard nothing for an election
  timeout), as pysyncobj's election does.
  Two members whose timers run out together would both pass and split the vote: a
  member asking for the same term as the asker refuses a larger id (unless that one
  already refused it) and yields to a smaller one. A member whose link is down cannot
  answer: a round fails as soon as the members still connected have refused.
* **Leader stickiness.** A follower that heard from a live leader within the minimum
  election timeout ignores ``request_vote`` (it neither adopts the term nor votes), and so
  does a leader that heard from a majority within that time. A leadership transfer is the
  exception: the target's ``request_vote`` carries ``rsso_transfer`` and is handled as
  before (thesis 3.10).
* **A leader whose link drops.** A leader that dies (SIGKILL, a crash) resets its TCP
  connections at once. A follower that loses its link to the leader it follows stops
  counting on that leader (its lease ends: it no longer hears it) and asks for a pre-vote
  without waiting for its election timer: the member first among the survivors (by id) at
  once, the next one :data:`STAGGER` of the minimum election timeout later, and so on, so
  that two of them do not split the vote. The pre-vote rules are unchanged: a member
  that still hears the leader (the link dropped for another reason) refuses, and nothing
  happens. A hung leader (SIGSTOP) keeps its connections: that is the election timeout's
  job.
* **A term that got ahead.** A node whose term is higher than a leader's ignores that
  leader's appends (pysyncobj). If the others are sticky, such a node could be shut out
  for as long as the leader lives (its term went up in an election that a pre-vote allowed
  but that lost its majority a moment later); so it answers such an append with
  ``rsso_term``, and a leader that receives a higher term steps down, as etcd's does.

**Rolling upgrade.** Every message this node sends carries ``"rsso": 1``, and it greets
every member on connecting (``rsso_hello``): a member that ever sent it is known to speak
these extensions. An old node ignores unknown message types and unknown keys (pysyncobj
dispatches on ``type`` and reads only the keys it knows), so it never answers a pre-vote:
in a pre-vote count, a member *not* known to speak the extensions counts as a yes while it
is connected (it would vote in the real election anyway, exactly as before the upgrade),
and stickiness applies only to vote requests from members that do speak them (an old node
that came back with a higher term is let in the old way, or it would be shut out). A mixed
cluster therefore elects as the old one did; once every member runs this code, elections
happen only when needed.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pysyncobj.monotonic import monotonic as _pso_monotonic

from raftsso.logs import RateLimiter

log = logging.getLogger(__name__)

EXTENSIONS_KEY = "rsso"
EXTENSIONS_VERSION = 1
HELLO = "rsso_hello"
PRE_VOTE = "rsso_pre_vote"
PRE_VOTE_RESPONSE = "rsso_pre_vote_response"
NEWER_TERM = "rsso_term"
TRANSFER_KEY = "rsso_transfer"

_FOLLOWER, _CANDIDATE, _LEADER = 0, 1, 2  # pysyncobj's _RAFT_STATE
LOG_PERIOD = 10.0
# After the leader's link drops, the survivors ask in turn, this share of the minimum
# election timeout apart (several pre-vote and vote round trips on a LAN).
STAGGER = 1 / 3


def monotonic() -> float:
    """pysyncobj's clock (its election deadlines and response times use it)."""
    return float(_pso_monotonic())


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Elections:
    """Pre-vote and stickiness for one pysyncobj ``SyncObj`` (see the module docstring).

    Everything here runs in the Raft thread: :meth:`before_tick` and :meth:`after_tick`
    around pysyncobj's tick, :meth:`on_message` before pysyncobj sees a message,
    :meth:`outgoing` on every message sent, :meth:`on_connected` on every new link and
    :meth:`on_disconnected` on every lost one.
    """

    def __init__(self, sync: Any) -> None:
        self._sync = sync
        self.capable: set[str] = set()  # members that speak these extensions (by address)
        self._linked_at: dict[str, float] = {}  # when each member's link came up
        self._round = 0
        self._round_term: int | None = None  # the term of the pre-vote under way, if any
        self._granted: set[str] = set()
        self._refused: set[str] = set()
        self._passed = False
        self._passed_term: int | None = None
        self._passed_at = -math.inf
        self._questions: list[tuple[Any, dict[str, Any]]] = []
        self._transfer_campaign = False
        self._leader_heard = -math.inf  # when a live leader was last heard from
        self._newer_term_sent: dict[str, float] = {}
        self._limiter = RateLimiter(LOG_PERIOD)

    # pysyncobj's private state (name-mangled attributes of SyncObj) ---------------------

    def _get(self, name: str) -> Any:
        return getattr(self._sync, f"_SyncObj__{name}")

    def _set(self, name: str, value: Any) -> None:
        setattr(self._sync, f"_SyncObj__{name}", value)

    def _call(self, name: str, *args: Any) -> Any:
        return getattr(self._sync, f"_SyncObj__{name}")(*args)

    def _send(self, node: Any, message: dict[str, Any]) -> None:
        self._get("transport").send(node, message)

    def _voters(self) -> list[Any]:
        return list(self._get("otherNodes"))

    def _min_timeout(self) -> float:
        return float(self._sync.conf.raftMinTimeout)

    def _log_is_behind(self, last_index: int, last_term: int) -> bool:
        """Is a log ending at (``last_index``, ``last_term``) behind this node's?"""
        my_term = int(self._call("getCurrentLogTerm"))
        my_index = int(self._call("getCurrentLogIndex"))
        return last_term < my_term or (last_term == my_term and last_index < my_index)

    def in_lease(self) -> bool:
        """Heard from a live leader within the minimum election timeout (or, as the leader,
        from a majority within it)."""
        now = monotonic()
        if self._get("raftState") == _LEADER:
            since = now - self._min_timeout()
            responses = self._get("lastResponseTime")
            voters = self._voters()
            heard = 1 + sum(1 for n in voters if responses.get(n, -math.inf) > since)
            return heard > (len(voters) + 1) / 2
        return now - self._leader_heard < self._min_timeout()

    # the tick -------------------------------------------------------------------------

    def before_tick(self) -> bool:
        """Run a pre-vote where pysyncobj would start an election in this tick.

        True if pysyncobj may start an election in this tick (a pre-vote passed, a
        leadership transfer, or nobody to ask). Otherwise the member keeps pysyncobj from
        starting one (:meth:`~raftsso.raft.member._RaftSyncObj._onTick`): its timer may
        run out while this tick runs (a node short of CPU), and it must not elect unasked.
        """
        sync = self._sync
        if sync.selfNode is None:
            return False
        if self._due():
            # The timer ran out; but a node that did not get the CPU for a while (a busy
            # machine) may have the leader's heartbeats waiting unread: read them first.
            poller = getattr(sync, "_poller", None)
            if poller is not None:
                poller.poll(0)
        self.answer_pre_votes()
        if self._get("raftState") == _LEADER:
            self._round_term = None
            return False
        now = monotonic()
        if self._passed:  # a majority said yes: pysyncobj's election runs in this tick
            self._passed = False
            if now - self._passed_at <= self._min_timeout():
                return True
            # ... unless this node lost the CPU since: a yes that old says nothing about
            # now (a leader may have been elected meanwhile). Ask again later.
            self._set("raftElectionDeadline", now + self._call("generateRaftTimeout"))
            log.info("pre-vote for term %s passed %.3f s ago: too long, no election",
                     self._passed_term, now - self._passed_at)
            return False
        if not self._due(now):
            return False
        if self._get("transferInProgress"):
            # TimeoutNow from our leader: elect at once, and tell the voters it is a transfer.
            self._transfer_campaign = True
            return True
        self._start_round(now)
        if self._passed:  # nobody to ask (or only old members): elect in this very tick
            self._passed = False
            return True
        return False

    def _due(self, now: float | None = None) -> bool:
        """Has the election timer run out (and is there anyone to ask)?"""
        if self._get("raftState") == _LEADER:
            return False
        return bool(self._get("raftElectionDeadline") < (monotonic() if now is None else now)
                    and (self._get("connectedNodes") or not self._get("otherNodes")))

    def answer_pre_votes(self) -> None:
        """Answer the pre-vote requests received since the last tick.

        They are answered after everything that arrived with them has been read: a node
        that was short of CPU for a while must see the leader's heartbeats waiting in its
        sockets before it says that it hears no leader.
        """
        questions, self._questions = self._questions, []
        for node, message in questions:
            self._answer_pre_vote(node, message)

    def after_tick(self) -> None:
        self._transfer_campaign = False

    def _start_round(self, now: float) -> None:
        term = int(self._get("raftCurrentTerm")) + 1
        self._round += 1
        self._round_term = term
        self._granted, self._refused = set(), set()
        # pysyncobj's election would reset the timer: a failed round is retried after it.
        self._set("raftElectionDeadline", now + self._call("generateRaftTimeout"))
        if self._get("raftLeader") is not None:
            self._set("raftLeader", None)  # nothing heard for an election timeout
            self._call("onLeaderChanged")
        message = {"type": PRE_VOTE, "term": term, "round": self._round,
                   "last_log_index": self._call("getCurrentLogIndex"),
                   "last_log_term": self._call("getCurrentLogTerm")}
        for node in self._voters():
            self._send(node, message)
        self._limiter.log("asking", log, logging.INFO,
                          "no leader heard for an election timeout: asking the others "
                          f"before an election (pre-vote for term {term})")
        self._decide()

    def _decide(self) -> None:
        term = self._round_term
        if term is None:
            return
        voters = self._voters()
        connected = self._get("connectedNodes")
        # A member not known to speak pre-vote (an old node) counts as a yes while it is
        # connected: it would grant or refuse the real vote, as before the upgrade. Only
        # once the link is older than the minimum election timeout, though: a new member
        # greets us (HELLO) as soon as it connects, and a node that has just restarted
        # has heard nobody yet: counting everyone as old would let it elect at once.
        now = monotonic()
        old = {n.id for n in voters if n.id not in self.capable and n in connected}
        young = {i for i in old if now - self._linked_at.get(i, -math.inf) < self._min_timeout()}
        old -= young
        yes = 1 + sum(1 for n in voters if n.id in self._granted or n.id in old)
        if yes > (len(voters) + 1) / 2:
            self._round_term = None
            self._passed = True
            self._passed_term = term
            self._passed_at = monotonic()
            self._set("raftElectionDeadline", 0)
            log.info("pre-vote for term %d passed (%d of %d members): starting an election",
                     term, yes, len(voters) + 1)
            return
        # Only a connected member can still answer (a dead leader's link is gone).
        undecided = sum(1 for n in voters if (n.id in self.capable or n.id in young)
                        and n in connected
                        and n.id not in self._granted and n.id not in self._refused)
        if yes + undecided <= (len(voters) + 1) / 2:
            self._round_term = None
            self._limiter.log("refused", log, logging.INFO,
                              f"pre-vote for term {term} refused by "
                              f"{', '.join(sorted(self._refused))}: they hear from a leader "
                              "or hold a newer log; no election")

    # messages -------------------------------------------------------------------------

    def on_connected(self, node: Any) -> None:
        self._linked_at[node.id] = monotonic()
        self._send(node, {"type": HELLO})

    def on_disconnected(self, node: Any) -> None:
        """The link to ``node`` is gone: if it was our leader, ask for a pre-vote soon."""
        if self._sync.selfNode is None or self._get("raftState") != _FOLLOWER \
                or self._get("raftLeader") != node or self._get("transferInProgress"):
            return
        self._leader_heard = -math.inf  # we no longer hear that leader
        survivors = sorted({n.id for n in self._voters()} - {node.id}
                           | {self._sync.selfNode.id})
        rank = survivors.index(self._sync.selfNode.id)
        due = monotonic() + rank * STAGGER * self._min_timeout()
        if due < self._get("raftElectionDeadline"):
            self._set("raftElectionDeadline", due)
        log.info("lost the link to the leader %s: asking the others %s", node.id,
                 "now" if rank == 0 else f"in {rank * STAGGER * self._min_timeout():.3f} s")

    def outgoing(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return message
        tagged = {**message, EXTENSIONS_KEY: EXTENSIONS_VERSION}
        if self._transfer_campaign and message.get("type") == "request_vote":
            tagged[TRANSFER_KEY] = True
        return tagged

    def on_message(self, node: Any, message: Any) -> bool:
        """Handle what is ours; True if pysyncobj must not see the message."""
        if not isinstance(message, dict):
            return False
        if message.get(EXTENSIONS_KEY):
            self.capable.add(node.id)
        kind = message.get("type")
        if kind == HELLO:
            return True
        if kind == PRE_VOTE:
            self._questions.append((node, message))  # answered at the end of this read
            return True
        if kind == PRE_VOTE_RESPONSE:
            self._count(node, message)
            return True
        if kind == NEWER_TERM:
            self._newer_term(node, message)
            return True
        if kind == "append_entries":
            self._append_entries(node, message)
            return False
        if kind == "request_vote":
            return self._sticky(node, message)
        return False

    def _append_entries(self, node: Any, message: dict[str, Any]) -> None:
        term = _int(message.get("term"))
        if term is None:
            return
        current = int(self._get("raftCurrentTerm"))
        if term >= current:
            self._leader_heard = monotonic()  # pysyncobj follows it: a live leader
            self._round_term = None
            return
        # pysyncobj drops an append from an older term without a word; say we are ahead.
        now = monotonic()
        if now - self._newer_term_sent.get(node.id, -math.inf) >= self._min_timeout():
            self._newer_term_sent[node.id] = now
            self._send(node, {"type": NEWER_TERM, "term": current})

    def _sticky(self, node: Any, message: dict[str, Any]) -> bool:
        """Ignore a vote request while a live leader is heard from (True: ignored)."""
        if node.id not in self.capable or message.get(TRANSFER_KEY) or not self.in_lease():
            return False
        self._limiter.log(("sticky", node.id), log, logging.INFO,
                          f"ignored a vote request from {node.id} for term "
                          f"{message.get('term')}: a live leader was heard from within the "
                          "election timeout")
        return True

    def _answer_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        term = _int(message.get("term"))
        last_index = _int(message.get("last_log_index"))
        last_term = _int(message.get("last_log_term"))
        if term is None or last_index is None or last_term is None:
            return
        granted = (node in self._get("otherNodes")
                   and term > int(self._get("raftCurrentTerm"))
                   and not self.in_lease()
                   and not self._log_is_behind(last_index, last_term))
        if granted and self._passed and self._passed_term == term:
            granted = False  # our own pre-vote for this term passed: we stand in it
        elif granted and self._round_term == term:
            # Both of us ask for the same term (our timers ran out together): were both
            # to pass, both would stand and split the vote. The smaller id goes first,
            # unless the asker already refused us (it heard the leader then, not now).
            if self._sync.selfNode.id < node.id and node.id not in self._refused:
                granted = False
            else:
                self._round_term = None  # ours is over; our timer runs again
        self._send(node, {"type": PRE_VOTE_RESPONSE, "term": term,
                          "round": message.get("round"), "granted": granted})

    def _count(self, node: Any, message: dict[str, Any]) -> None:
        if (self._round_term is None or message.get("term") != self._round_term
                or message.get("round") != self._round
                or node not in self._get("otherNodes")):
            return
        (self._granted if message.get("granted") is True else self._refused).add(node.id)
        self._decide()

    def _newer_term(self, node: Any, message: dict[str, Any]) -> None:
        term = _int(message.get("term"))
        current = int(self._get("raftCurrentTerm"))
        if term is None or term <= current or node not in self._get("otherNodes"):
            return
        log.info("%s is in term %d, ahead of this node's term %d: adopting it", node.id,
                 term, current)
        # What pysyncobj does on a vote request of a higher term, without the vote.
        self._call("setCurrentTerm", term, None)
        self._call("setState", _FOLLOWER)
        self._set("raftLeader", None)
        self._round_term = None
