"""The nemesis: random faults from a seeded RNG, each one healed before the next.

Faults (weights in :data:`FAULTS`):

``kill``           SIGKILL one node, restart it after 0-3 s
``pause``          SIGSTOP one node for 0.3-5 s, then SIGCONT
``cut_one``        cut one node off from the others for 1-6 s (namespaces; SIGSTOP without)
``cut_majority``   cut a majority off, each node from every other (two of three: no
                   quorum anywhere) for 1-6 s
``kill_all``       SIGKILL every node at once, restart them all after 0-2 s

Half of the single-node faults hit the current leader (looked up when the fault starts),
the rest a node drawn at random. Between two faults the cluster is left alone for 0.5-3 s.
The seed fixes the sequence of faults, targets' kinds and durations; which node leads at a
given moment, and so the interleaving with the clients, is up to the machine.

Before each fault the nemesis checks that no node exited on its own (only the nemesis
kills nodes here; a node that exits by itself, e.g. refusing to start, is recorded as a
``node_exited`` operation, which the checker reports, and restarted).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from tests.chaos.history import History
from tests.harness import Cluster

FAULTS: dict[str, float] = {
    "kill": 3.0,
    "pause": 2.5,
    "cut_one": 3.0,
    "cut_majority": 1.5,
    "kill_all": 1.0,
}


class Nemesis(threading.Thread):
    def __init__(self, cluster: Cluster, history: History, seed: int,
                 stop: threading.Event, quiet: tuple[float, float] = (0.5, 3.0),
                 faults: dict[str, float] | None = None) -> None:
        super().__init__(name="chaos-nemesis", daemon=True)
        self.cluster = cluster
        self.history = history
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.quiet = quiet
        self.faults = faults or FAULTS
        self.error: BaseException | None = None
        self.expected_dead: set[str] = set()

    # helpers --------------------------------------------------------------------------

    def _leader(self) -> str | None:
        leaders = []
        for node_id in self.cluster.ids:
            if node_id in self.cluster.paused or not self.cluster.alive(node_id):
                continue
            try:
                st = self.cluster.call(node_id, "status", timeout=0.5)
            except Exception:
                continue
            if st.get("role") == "leader":
                leaders.append((st.get("term", 0), node_id))
        return max(leaders)[1] if leaders else None

    def _pick_target(self) -> tuple[str, str]:
        want_leader = self.rng.random() < 0.5
        fallback = self.rng.choice(self.cluster.ids)
        if want_leader:
            leader = self._leader()
            if leader is not None:
                return leader, "leader"
        return fallback, "random"

    def check_exits(self) -> None:
        for node_id, code in self.cluster.exit_codes().items():
            if code is not None and node_id not in self.expected_dead and code != -9:
                tail = self.cluster.log(node_id)[-3000:]
                self.history.begin("nemesis", "node_exited", node=node_id,
                                   code=code, log_tail=tail).finish("info")
                self.cluster.start(node_id)

    # faults -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.rng.uniform(*self.quiet)):
                self.check_exits()
                names = list(self.faults)
                fault = self.rng.choices(names, weights=[self.faults[n] for n in names])[0]
                getattr(self, f"_{fault}")()
        except BaseException as exc:
            self.error = exc

    def _kill(self) -> None:
        node, why = self._pick_target()
        delay = self.rng.uniform(0.0, 3.0)
        with self.history.info("nemesis", "kill", node=node, target=why, down_for=delay):
            self.cluster.kill(node)
            time.sleep(delay)
            self.cluster.start(node)

    def _pause(self) -> None:
        node, why = self._pick_target()
        hold = self.rng.uniform(0.3, 5.0)
        with self.history.info("nemesis", "pause", node=node, target=why, hold=hold):
            self.cluster.pause(node)
            time.sleep(hold)
            self.cluster.resume(node)

    def _cut(self, nodes: list[str], hold: float, fault: str, **info: Any) -> None:
        with self.history.info("nemesis", fault, nodes=nodes, how=self.cluster.net.kind,
                               hold=hold, **info):
            self.cluster.cut(*nodes)
            try:
                time.sleep(hold)
            finally:
                self.cluster.heal()

    def _cut_one(self) -> None:
        node, why = self._pick_target()
        self._cut([node], self.rng.uniform(1.0, 6.0), "cut_one", target=why)

    def _cut_majority(self) -> None:
        nodes = self.rng.sample(self.cluster.ids, len(self.cluster.ids) // 2 + 1)
        self._cut(sorted(nodes), self.rng.uniform(1.0, 6.0), "cut_majority")

    def _kill_all(self) -> None:
        delay = self.rng.uniform(0.0, 2.0)
        with self.history.info("nemesis", "kill_all", down_for=delay):
            self.cluster.kill()
            time.sleep(delay)
            self.cluster.start()
