"""The SSO client: the master secret cached in memory, encryption straight through failover.

This is the SSO-service half of ENTSSO, without its outage. An :class:`SSOClient`

* fetches the keyring (every usable master secret version and which one is primary) at
  start from any node that answers, and fails with :class:`ClusterUnavailable` if none does;
* keeps it in memory only (never on disk, in a log line, a ``repr`` or :meth:`state`);
* resyncs every ``resync_interval`` seconds (default 60, +/-10 % jitter) from a daemon
  thread, sticking to the node that answered last and moving on to the next one when it
  fails; after a failure it retries sooner (0.5 s, doubling, never slower than the interval);
* never goes back: a keyring whose ``commit_index`` is older than the newest it has seen is
  ignored and the next node is tried (see :func:`_is_older`);
* encrypts with the primary while the cache is *fresh* (the last successful sync is younger
  than ``max_staleness``, default twice the resync interval) and raises
  :class:`StaleSecret` past that, while the thread keeps trying;
* decrypts with any cached version (staged ones included), whatever the state of the
  cluster; a token under a version newer than any it knows triggers an immediate resync
  (at most one per ``on_demand_interval``, default 1 s) and one retry. Every bad token ends
  in the one opaque :class:`InvalidToken`.

Where the keyring comes from is a :class:`KeyringSource`: :class:`ClusterSource` (mutual TLS
to the nodes of a deployment) in production. The source is the *documented internal seam*
for tests: anything with ``endpoints``, ``fetch(endpoint)`` and ``close()`` will do, and a
``clock`` can be injected to test staleness without sleeping.
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from raftsso import envelope, pki
from raftsso.client_reports import StoreWriteReports
from raftsso.config import Endpoint, RemoteConfig, load_remote_config
from raftsso.errors import (
    ClusterUnavailable,
    ConfigError,
    DecodeError,
    InvalidToken,
    RaftssoError,
    StaleSecret,
)
from raftsso.protocol.ids import ClientId
from raftsso.protocol.messages import KeyringRequest, KeyringResult, Op, StoreReportRequest
from raftsso.remote import ClusterClient
from raftsso.wire import WireValue

log = logging.getLogger(__name__)

KEY_STATES = ("staged", "primary", "active")
DEFAULT_RESYNC_INTERVAL = 60.0
DEFAULT_ON_DEMAND_INTERVAL = 1.0
DEFAULT_JITTER = 0.1
_FIRST_RETRY = 0.5


# -- where keyrings come from --------------------------------------------------------


class KeyringSource(Protocol):
    """Where an :class:`SSOClient` fetches keyrings from (one call per node)."""

    @property
    def endpoints(self) -> Sequence[Endpoint]:
        """The nodes, in the order of first preference."""
        ...

    def fetch(self, endpoint: Endpoint) -> WireValue:
        """The raw answer of ``endpoint`` to the ``keyring`` operation.

        Raises ``OSError`` or a :class:`RaftssoError` when the node cannot answer.
        """
        ...

    def close(self) -> None:
        ...


class ClusterSource:
    """Keyrings over mutual TLS from the nodes of a deployment (one connection per node)."""

    def __init__(self, cluster: ClusterClient, timeout: float | None = None,
                 client_id: str | None = None, spread: bool = True) -> None:
        self._cluster = cluster
        self._timeout = timeout
        # Lets nodes tell which clients have synced a staged version (early promotion).
        self.client_id = ClientId(client_id or secrets.token_hex(8))
        # The client's cumulative encryptions per version, sent with every keyring request
        # (the leader's max_encryptions policy; set by SSOClient).
        self.encryptions: Callable[[], Mapping[int, int]] | None = None
        # ``spread``: start at a random node (a deployment's config lists the same order
        # for every client); without it, the caller's order is the order of preference.
        self._offset = random.randrange(len(cluster.nodes)) if spread and cluster.nodes else 0

    @property
    def endpoints(self) -> Sequence[Endpoint]:
        # Each client starts at a random node so that many clients spread over the cluster.
        nodes = self._cluster.nodes
        return nodes[self._offset:] + nodes[:self._offset]

    def fetch(self, endpoint: Endpoint, known: int | None = None) -> WireValue:
        """``known``: the ``commit_index`` of the keyring held, so that a node whose keyring
        is the same may answer ``unchanged`` (no versions) instead of the whole keyring."""
        counts = self.encryptions() if self.encryptions is not None else None
        return self._cluster.call_node(endpoint.address, Op.KEYRING,
                                       KeyringRequest(self.client_id, known=known,
                                                      encryptions=counts).to_wire(),
                                       timeout=self._timeout)

    def close(self) -> None:
        self._cluster.close()

    def report_store(self, request: StoreReportRequest) -> None:
        """Send a store report (rows this client wrote) to the leader."""
        self._cluster.request_leader(request, deadline=self._timeout)
    def use_context(self, ctx: ssl.SSLContext) -> None:
        self._cluster.set_context(ctx)


# -- the cached keyring --------------------------------------------------------------


@dataclass(frozen=True)
class _Version:
    id: int
    state: str
    fingerprint: str
    envelope: envelope.Envelope = field(repr=False)


@dataclass(frozen=True)
class _Keyring:
    cluster_id: str
    node_id: str
    term: int
    commit_index: int
    primary: int | None
    versions: Mapping[int, _Version] = field(repr=False)


@dataclass(frozen=True)
class _Cache:
    """What encrypt/decrypt read: replaced as a whole, so readers need no lock."""

    ring: _Keyring
    synced_at: float  # the injected (monotonic) clock
    synced_at_wall: float
    max_version: int
    # What encrypt/decrypt are armed with (envelope.arm_client):
    fresh_until: float  # synced_at + max_staleness
    primary: envelope.Envelope | None
    keyset: envelope.Keyset  # every version's envelope, by token header
    # Counts the primary's encryptions (one C call per encrypt; see encryption_counts).
    uses: Iterator[int] = field(default_factory=itertools.count)


def parse_keyring(raw: WireValue, held: _Keyring | None = None) -> _Keyring:
    """Check a node's ``keyring`` answer and build the envelopes (:class:`DecodeError`).

    An ``unchanged`` answer (to a request that sent ``held.commit_index`` as ``known``)
    is ``held`` as of the answer's term and index; it must name the same cluster and
    primary, or it is refused like any malformed answer.
    """
    answer = KeyringResult.from_wire(raw)  # the shape: ids, states, one primary
    if answer.unchanged:
        if held is None:
            raise DecodeError("an unchanged keyring answer to a client that holds none")
        if answer.cluster_id != held.cluster_id or answer.primary != held.primary:
            raise DecodeError("an unchanged keyring answer that does not match the keyring "
                              "held (cluster or primary differs)")
        return _Keyring(cluster_id=answer.cluster_id, node_id=answer.node_id,
                        term=answer.term, commit_index=answer.commit_index,
                        primary=held.primary, versions=held.versions)
    versions: dict[int, _Version] = {}
    for v in answer.versions:
        vid = v.info.id
        if envelope.fingerprint(v.key) != v.info.fingerprint:
            raise DecodeError(f"the key of version {vid} does not match its fingerprint")
        versions[vid] = _Version(vid, v.info.state.value, v.info.fingerprint,
                                 envelope.Envelope(vid, v.key))
    return _Keyring(cluster_id=answer.cluster_id, node_id=answer.node_id, term=answer.term,
                    commit_index=answer.commit_index, primary=answer.primary,
                    versions=versions)


def _is_older(new: _Keyring, seen: _Keyring) -> bool:
    """Would accepting ``new`` take the client back behind ``seen``?

    Raft log positions are totally ordered across the cluster and a node's keyring at
    applied index *i* is the keyring after the committed entries 1..i, so the applied
    ``commit_index`` alone orders keyrings. ``term`` is deliberately not the first key: a
    follower cut off from the others raises its term in failed elections without receiving
    entries, so a (term, index) order would accept its *older* keyring as newer. At an
    equal index the content is the same, whatever the term.
    """
    return new.commit_index < seen.commit_index


# -- the client -------------------------------------------------------------------------


class SSOClient(envelope.ClientCore):
    """The master secret cache of one SSO service; thread-safe.

    Build it with :meth:`from_config` (``client.toml``), :meth:`connect` (explicit nodes
    and TLS context) or directly from a :class:`RemoteConfig` or a :class:`KeyringSource`.
    The constructor performs the first sync and starts the resync thread; use the client
    as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        source: RemoteConfig | KeyringSource,
        *,
        cluster_id: str | None = None,
        resync_interval: float | None = None,
        max_staleness: float | None = None,
        on_demand_interval: float = DEFAULT_ON_DEMAND_INTERVAL,
        jitter: float = DEFAULT_JITTER,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        background: bool = True,
    ) -> None:
        if isinstance(source, RemoteConfig):
            cfg = source
            cluster_id = cluster_id if cluster_id is not None else cfg.cluster_id
            if resync_interval is None:
                resync_interval = cfg.resync_interval
            if max_staleness is None:
                max_staleness = cfg.max_staleness
            self._source: KeyringSource = ClusterSource(ClusterClient.from_config(cfg))
            self._config: RemoteConfig | None = cfg
        else:
            self._source = source
            self._config = None
        interval = DEFAULT_RESYNC_INTERVAL if resync_interval is None else resync_interval
        staleness = 2.0 * interval if max_staleness is None else max_staleness
        try:
            if not interval > 0:
                raise ConfigError("resync_interval must be positive")
            if not 0 <= jitter < 1:
                raise ConfigError("jitter must be in [0, 1)")
            if not staleness > interval * (1 + jitter):
                raise ConfigError(
                    f"max_staleness ({staleness:g} s) must exceed resync_interval "
                    f"({interval:g} s) plus its jitter, or encryption would stop between "
                    "two successful resyncs")
            if not self._source.endpoints:
                raise ConfigError("an SSO client needs at least one node")
        except BaseException:
            self._source.close()
            raise
        self.resync_interval = interval
        self.max_staleness = staleness
        self._cluster_id = cluster_id
        self._on_demand_interval = on_demand_interval
        self._jitter = jitter
        self._clock = clock
        self._wall = wall_clock
        self._endpoints = tuple(self._source.endpoints)
        self._preferred = 0

        self._cache: _Cache | None = None
        self._sync_lock = threading.Lock()  # one network sync at a time
        self._lock = threading.Lock()  # the bookkeeping below
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_attempt_at: float | None = None
        self._failures = 0
        self._syncs = 0
        self._stale_logged = False
        self._last_on_demand: float | None = None
        self._last_on_demand_version = 0
        self._closed = False
        self._stop = threading.Event()
        self._counters: dict[int, Iterator[int]] = {}
        self._counter_reads: dict[int, int] = {}
        if isinstance(self._source, ClusterSource):
            self._source.encryptions = self.encryption_counts
        self._thread: threading.Thread | None = None
        # Rows written into SSO stores, reported to the cluster (raftsso.client_reports).
        self._store_writes = StoreWriteReports(getattr(self._source, "report_store", None),
                                               wall_clock)

        try:
            self.sync()
        except BaseException:
            self._source.close()
            raise
        if background:
            self._thread = threading.Thread(target=self._run, name="raftsso-resync",
                                            daemon=True)
            self._thread.start()

    # construction ----------------------------------------------------------------------

    @classmethod
    def from_config(cls, path: str | Path, **options: Any) -> SSOClient:
        """A client for the deployment described by ``client.toml`` at ``path``.

        ``options`` are the keyword arguments of the constructor (for example
        ``resync_interval=0.5``); they override the file.
        """
        return cls(load_remote_config(path), **options)

    @classmethod
    def connect(cls, nodes: Sequence[Endpoint | str], ssl_context: ssl.SSLContext, *,
                timeout: float = 5.0, **options: Any) -> SSOClient:
        """A client for explicit nodes (``Endpoint`` or ``"host:port"``, in order of
        preference) and a TLS context.

        The context must present a ``client`` (or ``admin``) certificate of the cluster
        (see :func:`raftsso.pki.client_context`).
        """
        endpoints = [n if isinstance(n, Endpoint) else Endpoint(n, n) for n in nodes]
        if not endpoints:
            raise ConfigError("an SSO client needs at least one node")
        return cls(ClusterSource(ClusterClient(endpoints, ssl_context, timeout), spread=False),
                   **options)

    def __repr__(self) -> str:
        cache = self._cache
        primary = cache.ring.primary if cache else None
        versions = sorted(cache.ring.versions) if cache else []
        return (f"SSOClient(cluster_id={self._cluster_id!r}, primary={primary}, "
                f"versions={versions}, closed={self._closed})")

    def __enter__(self) -> SSOClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the resync thread, close the connections and drop the cached keyring."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self._store_writes.flush()  # a one-shot CLI write reports before it exits
        with self._sync_lock:
            self._cache = None
            envelope.disarm_client(self)
            self._source.close()

    # envelope operations -------------------------------------------------------------

    def _current(self) -> _Cache:
        cache = self._cache
        if cache is None:
            raise RaftssoError("this SSO client is closed")
        return cache

    @property
    def _clock(self) -> Callable[[], float]:
        return self._clock_fn

    @_clock.setter
    def _clock(self, clock: Callable[[], float]) -> None:
        # The injected-clock seam (tests jump time): encrypt reads the clock it was armed
        # with, so arm it again.
        self._clock_fn = clock
        cache: _Cache | None = getattr(self, "_cache", None)
        if cache is not None:
            self._arm(cache)

    def _arm(self, cache: _Cache) -> None:
        envelope.arm_client(self, self._clock_fn, cache.fresh_until, cache.uses, cache.primary,
                            cache.keyset)

    # encrypt(data, associated_data=b"") and decrypt(token, associated_data=b"") are
    # envelope.ClientCore's (in C when built): the common case, armed by _install; they
    # hand every other call to these two methods, which define what the client does.

    def _encrypt_slow(self, data: bytes, associated_data: bytes = b"") -> bytes:
        """The common case's refusals, spelled out (and the one authority on staleness)."""
        cache = self._current()
        age = self._clock() - cache.synced_at
        if age >= self.max_staleness:
            raise StaleSecret(
                f"the cached master secret was last synced {age:.1f} s ago, beyond "
                f"max_staleness ({self.max_staleness:g} s): no node of the cluster has "
                "answered since, so encryption is refused (decryption still works). "
                "Check that the raftsso nodes are running and reachable "
                "(raftsso -c admin.toml status); the client keeps retrying")
        if cache.primary is None:
            raise ClusterUnavailable("the cluster has no primary master secret yet; wait for "
                                     "its leader to create one (raftsso status)")
        # Fresh after all (synced_at + max_staleness rounded the other way).
        next(cache.uses)
        return cache.primary.encrypt(data, associated_data)

    def _decrypt_slow(self, token: bytes, associated_data: bytes = b"") -> bytes:
        cache = self._cache
        if cache is not None:
            try:
                plaintext = cache.keyset.open(token, associated_data)
            except envelope.TokenDoesNotOpen:
                raise InvalidToken() from None
            if plaintext is not None:
                return plaintext
        # Closed, not a token, a version not cached (resync), or not bytes: spelled out.
        cache = self._current()
        version_id = envelope.token_key_version(token)
        version = cache.ring.versions.get(version_id)
        if version is None:
            version = self._resync_for(version_id)
            if version is None:
                raise InvalidToken()
        return version.envelope.decrypt(token, associated_data)

    def _resync_for(self, version_id: int) -> _Version | None:
        cache = self._current()
        if version_id <= cache.max_version:
            # Older than what we know and not in the keyring: retired (or never
            # existed). Versions only grow, so a resync cannot bring it back.
            return None
        with self._sync_lock:
            cache = self._current()
            found = cache.ring.versions.get(version_id)
            if found is not None:  # another thread synced while we waited
                return found
            now = self._clock()
            with self._lock:
                last = self._last_on_demand
                # One on-demand resync per interval; a version newer than the last one
                # asked for (a rotation right after another) may go at once, but only a
                # few versions ahead, so forged tokens cannot make every call a fetch.
                newer = self._last_on_demand_version < version_id <= cache.max_version + 16
                if last is not None and now - last < self._on_demand_interval and not newer:
                    return None
                self._last_on_demand = now
                self._last_on_demand_version = max(self._last_on_demand_version, version_id)
            try:
                # Right after a rotation a follower may not have the version yet: ask the
                # other nodes too, rather than waiting for the rate limit to pass.
                self._sync_locked(want=version_id)
            except RaftssoError:
                return None
            return self._current().ring.versions.get(version_id)

    # syncing -------------------------------------------------------------------------

    def sync(self) -> None:
        """Fetch the keyring now (from the node that answered last, then the others).

        Raises :class:`ClusterUnavailable` when no node gives a usable keyring that is at
        least as new as the cached one; the cache is then kept unchanged.
        """
        with self._sync_lock:
            if self._closed:
                raise RaftssoError("this SSO client is closed")
            self._sync_locked()

    def _sync_locked(self, want: int | None = None) -> None:
        """Fetch from the preferred node, then the others; with ``want``, go on until a
        node's keyring holds that version (keeping the newest acceptable one meanwhile)."""
        errors: list[str] = []
        installed = False
        n = len(self._endpoints)
        attempt_wall = self._wall()
        with self._lock:
            self._last_attempt_at = attempt_wall
        start = self._preferred  # _install moves it; the round must not
        for step in range(n):
            index = (start + step) % n
            endpoint = self._endpoints[index]
            try:
                ring = self._fetch(endpoint)
            except ConfigError:
                raise  # our own files are wrong (ca_cert did not issue cert): no node helps
            except (OSError, RaftssoError) as exc:
                errors.append(f"{endpoint.id}: {_describe(exc)}")
                continue
            problem = self._reject(ring)
            if problem is not None:
                errors.append(f"{endpoint.id}: {problem}")
                continue
            self._install(ring, index)
            installed = True
            if want is None or want in ring.versions:
                return
        if installed:
            return
        message = "no node gave a usable keyring (" + "; ".join(errors) + ")"
        self._failed(message)
        raise ClusterUnavailable(message)

    def _fetch(self, endpoint: Endpoint) -> _Keyring:
        cache = self._cache
        source = self._source
        if cache is None or not isinstance(source, ClusterSource):
            return parse_keyring(source.fetch(endpoint))
        # Send the index held: the node answers "unchanged" while the keyring is the same,
        # so a steady-state resync carries no keys and does not grow with the history.
        held = cache.ring
        return parse_keyring(source.fetch(endpoint, known=held.commit_index), held)

    def _reject(self, ring: _Keyring) -> str | None:
        if self._cluster_id is not None and ring.cluster_id != self._cluster_id:
            return (f"belongs to cluster {ring.cluster_id!r}, not {self._cluster_id!r}; "
                    "check the nodes in the client configuration")
        if ring.primary is None:
            return "has no primary master secret yet (catching up, or not bootstrapped)"
        cache = self._cache
        if cache is not None and _is_older(ring, cache.ring):
            return (f"answered an older keyring (applied index {ring.commit_index} < "
                    f"{cache.ring.commit_index} already seen); ignored")
        return None

    def _install(self, ring: _Keyring, index: int) -> None:
        previous = self._cache
        now = self._clock()
        self._cache = _Cache(ring=ring, synced_at=now, synced_at_wall=self._wall(),
                             max_version=max(ring.versions, default=0),
                             fresh_until=now + self.max_staleness,
                             primary=None if ring.primary is None
                             else ring.versions[ring.primary].envelope,
                             keyset=envelope.Keyset(v.envelope for v in ring.versions.values()),
                             uses=(itertools.count() if ring.primary is None
                                   else self._uses(ring.primary)))
        self._arm(self._cache)
        self._preferred = index
        if self._cluster_id is None:
            self._cluster_id = ring.cluster_id
        with self._lock:
            recovered = self._failures > 0
            self._failures = 0
            self._syncs += 1
            self._stale_logged = False
        if recovered:
            log.info("resynced the master secret keyring from %s after a failure",
                     ring.node_id)
        if previous is None or previous.ring.primary != ring.primary \
                or set(previous.ring.versions) != set(ring.versions):
            log.info("keyring from %s: primary version %s, versions %s (term %d, index %d)",
                     ring.node_id, ring.primary, sorted(ring.versions), ring.term,
                     ring.commit_index)

    def reload_certificate(self) -> bool:
        """Load the client certificate and key of the configuration again (on SIGHUP, say):
        new connections present them, open ones keep theirs. False for a client not made
        from a configuration; :class:`ConfigError` (nothing changed) if they do not load."""
        cfg = self._config
        if cfg is None or not isinstance(self._source, ClusterSource):
            return False
        self._source.use_context(pki.client_context(cfg.ca_cert, cfg.cert, cfg.key))
        return True

    def _uses(self, version: int) -> Iterator[int]:
        with self._lock:
            counter = self._counters.get(version)
            if counter is None:
                counter = self._counters[version] = itertools.count()
            return counter

    def encryption_counts(self) -> dict[int, int]:
        """Messages encrypted under each version by this client since it started (sent to
        the nodes at each resync: ``max_encryptions``).

        Each counter hands out one number per encryption (``itertools.count``: one C call,
        atomic under the GIL); reading takes one number too, so the reads are subtracted.
        """
        with self._lock:
            out = {}
            for version, counter in self._counters.items():
                reads = self._counter_reads.get(version, 0)
                out[version] = next(counter) - reads
                self._counter_reads[version] = reads + 1
            return {v: n for v, n in out.items() if n}

    def _failed(self, message: str) -> None:
        with self._lock:
            first = self._failures == 0
            self._failures += 1
            self._last_error = message
            self._last_error_at = self._wall()
        cache = self._cache
        if cache is None:
            return  # the constructor raises; nothing cached to speak of
        age = self._clock() - cache.synced_at
        with self._lock:
            newly_stale = age >= self.max_staleness and not self._stale_logged
            if newly_stale:
                self._stale_logged = True
        if first:
            log.warning("cannot resync the master secret: %s; decrypting with the cached "
                        "keyring, encryption stops in %.0f s unless a node answers",
                        message, max(0.0, self.max_staleness - age))
        elif newly_stale:
            log.error("the cached master secret is older than max_staleness (%g s): "
                      "encryption is refused until a node answers; last error: %s",
                      self.max_staleness, message)
        else:
            log.debug("resync failed again: %s", message)

    def _next_delay(self) -> float:
        with self._lock:
            failures = self._failures
        base = self.resync_interval
        if failures:
            base = min(base, _FIRST_RETRY * 2.0 ** (failures - 1))
        return base * random.uniform(1 - self._jitter, 1 + self._jitter)

    def store_written(self, store_id: str, kind: str, versions: Mapping[int, int]) -> None:
        """Rows an :class:`raftsso.store.SSOStore` wrote with this client, by version: sent
        to the cluster before the next resync (see :mod:`raftsso.client_reports`)."""
        self._store_writes.add(store_id, kind, versions)

    def _run(self) -> None:
        while not self._stop.wait(self._next_delay()):
            # Before the fetch: rows written under the old primary are known to the
            # cluster before this client can count as served the next keyring.
            self._store_writes.flush()
            try:
                self.sync()
            except RaftssoError:
                pass  # recorded in state(); the loop keeps trying
            except Exception:  # never let the resync thread die
                log.exception("unexpected error in the resync thread")
                with self._lock:
                    self._failures += 1

    # introspection -------------------------------------------------------------------

    def state(self) -> ClientState:
        """A snapshot for operators and health checks; never contains key material."""
        cache = self._cache
        with self._lock:
            last_attempt, last_error = self._last_attempt_at, self._last_error
            last_error_at, failures = self._last_error_at, self._failures
            syncs, closed = self._syncs, self._closed
        ring = cache.ring if cache else None
        age = self._clock() - cache.synced_at if cache else None
        return ClientState(
            cluster_id=self._cluster_id,
            node=ring.node_id if ring else None,
            term=ring.term if ring else None,
            commit_index=ring.commit_index if ring else None,
            primary=ring.primary if ring else None,
            versions=tuple(ClientVersion(v.id, v.state, v.fingerprint)
                           for v in sorted(ring.versions.values(), key=lambda v: v.id))
            if ring else (),
            last_sync=cache.synced_at_wall if cache else None,
            last_sync_age=age,
            stale=age is None or age >= self.max_staleness,
            resync_interval=self.resync_interval,
            max_staleness=self.max_staleness,
            last_attempt=last_attempt, last_error=last_error, last_error_at=last_error_at,
            consecutive_failures=failures, syncs=syncs, closed=closed)


@dataclass(frozen=True)
class ClientVersion:
    """A cached version as :meth:`SSOClient.state` shows it (no key)."""

    id: int
    state: str
    fingerprint: str


@dataclass(frozen=True)
class ClientState:
    """What :meth:`SSOClient.state` reports; never holds key material.

    ``node``: the node last synced from; ``last_sync``: Unix time of the last successful
    sync and ``last_sync_age`` its age in seconds; ``stale``: encryption is refused (older
    than ``max_staleness``); ``last_attempt``, ``last_error``, ``last_error_at``,
    ``consecutive_failures`` and ``syncs`` describe the resyncs. :meth:`to_dict` is the JSON
    view (the keys of earlier versions, which returned a dict).
    """

    cluster_id: str | None
    node: str | None
    term: int | None
    commit_index: int | None
    primary: int | None
    versions: tuple[ClientVersion, ...]
    last_sync: float | None
    last_sync_age: float | None
    stale: bool
    resync_interval: float
    max_staleness: float
    last_attempt: float | None
    last_error: str | None
    last_error_at: float | None
    consecutive_failures: int
    syncs: int
    closed: bool

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["versions"] = [{"id": v.id, "state": v.state, "fingerprint": v.fingerprint}
                           for v in self.versions]
        return out

    def __getitem__(self, key: str) -> Any:
        """Deprecated: ``state()["primary"]`` still reads as it did when this was a dict;
        use the attributes (or :meth:`to_dict`)."""
        return self.to_dict()[key]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


__all__ = ["ClientState", "ClientVersion", "ClusterSource", "KeyringSource", "SSOClient",
           "parse_keyring"]
