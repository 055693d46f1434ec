"""The clients of a chaos run: admin clients rotating, SSO clients encrypting and decrypting.

Admin clients send ``rotate`` (always ``now``, so every success changes the primary), half
of the time as a compare-and-set (``expect_primary`` = the primary some node reported just
before), each with a fresh 16-byte request id that every retry of that operation reuses.
They follow ``NOT_LEADER`` hints themselves (instead of ``ClusterClient.call_leader``) so
that each attempt, and the node that finally acknowledged, is recorded.

The rotate answer carries no term, so the node's ``status`` is read on the same connection
right before and right after the call; when both show the same term and the node led
before, that is the term in which it accepted the write (a node's term never decreases).
Otherwise the term is recorded as a range and the ack is left out of the
one-leader-per-term check (the election lines in the node logs cover every term anyway).

SSO clients are real :class:`SSOClient` objects with a short resync interval, over a
:class:`RecordingSource` that records every keyring answer a node gave them.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

from raftsso import envelope
from raftsso.client import ClusterSource, SSOClient
from raftsso.config import Endpoint
from raftsso.errors import (
    ClusterUnavailable,
    DecodeError,
    InvalidToken,
    NotLeader,
    RaftssoError,
    RemoteError,
    StaleSecret,
)
from raftsso.remote import ClusterClient
from tests.chaos.history import History
from tests.harness import Cluster, cluster_client

# Answers that say the write was certainly not applied by this attempt.
NOT_APPLIED = ("NOT_LEADER", "UNAVAILABLE", "NO_QUORUM")
# Answers that are the state machine's own verdict on this request id (final).
FSM_VERDICTS = ("CONFLICT", "NOT_READY")
RETRY_WINDOW = 8.0


def _status(client: ClusterClient, address: str) -> dict[str, Any] | None:
    try:
        st = client.call_node(address, "status", timeout=1.0)
    except (OSError, RaftssoError):
        return None
    return st if isinstance(st, dict) else None


class _Worker(threading.Thread):
    """One client process of the history: ``step()`` until stopped, a random pause between
    steps; an exception ends the worker and is reported by the runner (``error``)."""

    def __init__(self, name: str, history: History, seed: int, stop: threading.Event,
                 pause: tuple[float, float]) -> None:
        super().__init__(name=f"chaos-{name}", daemon=True)
        self.process = name
        self.history = history
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.pause = pause
        self.error: BaseException | None = None

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.step()
                self.stop_event.wait(self.rng.uniform(*self.pause))
        except BaseException as exc:  # reported by the runner
            self.error = exc
        finally:
            self.close()


class AdminWorker(_Worker):
    def __init__(self, name: str, cluster: Cluster, history: History, seed: int,
                 stop: threading.Event, cas_probability: float = 0.5,
                 pause: tuple[float, float] = (0.05, 0.4)) -> None:
        super().__init__(name, history, seed, stop, pause)
        self.cluster = cluster
        self.cas_probability = cas_probability
        self.client = cluster_client(cluster.admin_toml, 2.0)
        self.by_address = {a: n for n, a in cluster.addresses.items()}
        self.leader_hint: str | None = None

    def step(self) -> None:
        self.rotate_once()

    def close(self) -> None:
        self.client.close()

    def _read_primary(self) -> int | None:
        for node_id in self.rng.sample(self.cluster.ids, len(self.cluster.ids)):
            st = _status(self.client, self.cluster.addresses[node_id])
            if st is not None and isinstance(st.get("primary_version"), int):
                return int(st["primary_version"])
        return None

    def rotate_once(self) -> dict[str, Any]:
        expect = None
        cas = self.rng.random() < self.cas_probability
        if cas:
            expect = self._read_primary()
        rid = secrets.token_bytes(16)
        op = self.history.begin(self.process, "rotate", request_id=rid.hex(), cas=cas,
                                expect_primary=expect)
        args: dict[str, Any] = {"request_id": rid, "now": True}
        if expect is not None:
            args["expect_primary"] = expect
        attempts: list[dict[str, Any]] = []
        uncertain = False
        deadline = time.monotonic() + RETRY_WINDOW
        turn = self.rng.randrange(len(self.cluster.ids))
        while True:
            if self.leader_hint is not None:
                target = self.leader_hint
            else:
                target = self.cluster.ids[turn % len(self.cluster.ids)]
                turn += 1
            address = self.cluster.addresses[target]
            before = _status(self.client, address)
            attempt: dict[str, Any] = {"node": target, "t": self.history.now(),
                                       "term_before": before and before.get("term"),
                                       "role_before": before and before.get("role")}
            attempts.append(attempt)
            try:
                result = self.client.call_node(address, "rotate", args, timeout=4.0)
            except NotLeader as exc:
                attempt["answer"] = "NOT_LEADER"
                hint = exc.leader
                self.leader_hint = self.by_address.get(hint) if hint else None
                if self.leader_hint == target:
                    self.leader_hint = None
            except RemoteError as exc:
                attempt["answer"] = exc.code
                if exc.code in FSM_VERDICTS:
                    return op.finish("failed", error=exc.code, attempts=attempts,
                                     message=str(exc))
                if exc.code == "OUTCOME_UNKNOWN":
                    uncertain = True
                elif exc.code not in NOT_APPLIED:
                    # Not an answer this workload expects: recorded, flagged by the checker.
                    return op.finish("unknown" if uncertain else "failed", error=exc.code,
                                     attempts=attempts, message=str(exc), unexpected=True)
                self.leader_hint = None
            except ConnectionRefusedError:
                attempt["answer"] = "refused"  # never sent
                self.leader_hint = None
            except (OSError, DecodeError) as exc:
                attempt["answer"] = f"{type(exc).__name__}"
                uncertain = True  # it may have been sent and applied
                self.leader_hint = None
            else:
                after = _status(self.client, address)
                term_before = attempt["term_before"]
                term_after = after and after.get("term")
                exact = (term_before is not None and term_before == term_after
                         and attempt["role_before"] == "leader")
                attempt["answer"] = "ok"
                self.leader_hint = target
                return op.finish(
                    "ok", attempts=attempts, node=target,
                    version=result.get("version"), state=result.get("state"),
                    primary_version=result.get("primary_version"),
                    term=term_before if exact else None,
                    term_range=[term_before, term_after],
                    role_after=after and after.get("role"))
            if time.monotonic() >= deadline or (self.stop_event.is_set() and len(attempts) > 3):
                return op.finish("unknown" if uncertain else "failed",
                                 error="gave up" if uncertain else "not applied",
                                 attempts=attempts)
            time.sleep(0.02 if self.leader_hint else 0.1)


class RecordingSource:
    """A :class:`ClusterSource` that records every keyring answer (a ``fetch`` operation)."""

    def __init__(self, inner: ClusterSource, history: History, process: str) -> None:
        self._inner = inner
        self._history = history
        self._process = process

    @property
    def endpoints(self) -> Sequence[Endpoint]:
        return self._inner.endpoints

    def fetch(self, endpoint: Endpoint) -> Any:
        op = self._history.begin(self._process, "fetch", node=endpoint.id)
        try:
            raw = self._inner.fetch(endpoint)
        except (OSError, RaftssoError) as exc:
            op.finish("failed", error=type(exc).__name__)
            raise
        try:
            versions = raw.get("versions") or []
            op.finish("ok", commit_index=raw.get("commit_index"), term=raw.get("term"),
                      primary=raw.get("primary"),
                      versions=id_ranges(v.get("id") for v in versions),
                      primaries=sorted(v.get("id") for v in versions
                                       if v.get("state") == "primary"))
        except (AttributeError, TypeError) as exc:
            op.finish("ok", malformed=f"{type(exc).__name__}: {exc}")
        return raw

    def close(self) -> None:
        self._inner.close()


class TokenPool:
    """Every ciphertext written during the run: (token, plaintext, associated data)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[bytes, bytes, bytes]] = []

    def add(self, token: bytes, plaintext: bytes, ad: bytes) -> None:
        with self._lock:
            self.items.append((token, plaintext, ad))

    def pick(self, rng: random.Random) -> tuple[bytes, bytes, bytes] | None:
        with self._lock:
            if not self.items:
                return None
            # Mostly recent tokens, sometimes old ones.
            if rng.random() < 0.7:
                return self.items[-1 - rng.randrange(min(20, len(self.items)))]
            return rng.choice(self.items)

    def snapshot(self) -> list[tuple[bytes, bytes, bytes]]:
        with self._lock:
            return list(self.items)


def id_ranges(ids: Any) -> list[list[int]]:
    """Version ids as sorted, merged ``[first, last]`` ranges (a history stays small)."""
    out: list[list[int]] = []
    for vid in sorted(ids):
        if out and vid == out[-1][1] + 1:
            out[-1][1] = vid
        elif not out or vid > out[-1][1]:
            out.append([vid, vid])
    return out


def _ring(client: SSOClient) -> dict[str, Any]:
    st = client.state()
    return {"index": st["commit_index"], "primary": st["primary"],
            "versions": id_ranges(v["id"] for v in st["versions"])}


class SSOWorker(_Worker):
    def __init__(self, name: str, cluster: Cluster, history: History, seed: int,
                 stop: threading.Event, pool: TokenPool, resync_interval: float = 0.5,
                 pause: tuple[float, float] = (0.02, 0.1)) -> None:
        super().__init__(name, history, seed, stop, pause)
        self.pool = pool
        source = RecordingSource(ClusterSource(cluster_client(cluster.client_toml, 1.0),
                                               client_id=name), history, name)
        self.client = SSOClient(source, cluster_id=cluster.cluster_id,
                                resync_interval=resync_interval)
        self.n = 0

    def step(self) -> None:
        if self.rng.random() < 0.5:
            self.encrypt_once()
        else:
            self.decrypt_once()

    def close(self) -> None:
        self.client.close()

    def encrypt_once(self) -> None:
        self.n += 1
        plaintext = self.rng.randbytes(self.rng.randrange(1, 64))
        ad = f"{self.process}/{self.n}".encode()
        op = self.history.begin(self.process, "encrypt", ring_before=_ring(self.client))
        try:
            token = self.client.encrypt(plaintext, ad)
        except (StaleSecret, ClusterUnavailable) as exc:
            op.finish("failed", error=type(exc).__name__, ring=_ring(self.client))
            return
        except Exception as exc:
            op.finish("failed", error=f"{type(exc).__name__}: {exc}", unexpected=True,
                      ring=_ring(self.client))
            return
        self.pool.add(token, plaintext, ad)
        op.finish("ok", token=token.hex(), plaintext=plaintext.hex(), ad=ad.hex(),
                  version=envelope.token_key_version(token), ring=_ring(self.client))

    def decrypt_once(self) -> None:
        item = self.pool.pick(self.rng)
        if item is None:
            return
        token, plaintext, ad = item
        version = envelope.token_key_version(token)
        before = _ring(self.client)
        op = self.history.begin(self.process, "decrypt", version=version, ring_before=before,
                                known=any(a <= version <= b for a, b in before["versions"]))
        try:
            got = self.client.decrypt(token, ad)
        except InvalidToken:
            op.finish("failed", error="InvalidToken", ring=_ring(self.client))
            return
        except Exception as exc:
            op.finish("failed", error=f"{type(exc).__name__}: {exc}", unexpected=True,
                      ring=_ring(self.client))
            return
        op.finish("ok", correct=got == plaintext, ring=_ring(self.client))
