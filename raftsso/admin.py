"""The operator's library: :class:`AdminClient`, one typed method per admin operation.

The CLI (``raftsso -c admin.toml ...``) is a thin layer over this; so can any other tool
be. Every method sends a typed request (:mod:`raftsso.protocol.messages`) through a
:class:`~raftsso.remote.ClusterClient` (writes go to the leader, with one request id for
all retries, so a write is applied once) and returns a typed result.

Before its first call the client checks that the cluster it reaches is the one its
configuration names (``cluster_id``): a file of another deployment is refused as a
configuration error instead of acting on the wrong cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from raftsso import cluster_status
from raftsso.cluster_status import ClusterStatus
from raftsso.config import Endpoint, RemoteConfig, load_remote_config, split_address
from raftsso.errors import ConfigError, RaftssoError
from raftsso.fsutil import atomic_write
from raftsso.protocol.ids import NodeId, VersionId, node_id, version_id
from raftsso.protocol.node_status import PingRequest, SealView, StatusRequest
from raftsso.protocol.record import record
from raftsso.remote import ClusterClient

# Every other operation's types are imported by the method that sends it: building the
# frozen dataclasses of raftsso.protocol.messages is about half the start of a CLI call
# on a small machine, and ``status`` (and ``seal_status``) need only the status types.
if TYPE_CHECKING:  # Argon2id (cryptography) is loaded by the backup calls only
    from raftsso import backup as backups
    from raftsso.known_stores import KnownStore
    from raftsso.pki import CertInfo
    from raftsso.protocol.messages import (
        CertRegisterResult,
        CertRevokeResult,
        CertsResult,
        MemberChangeResult,
        MembersResult,
        RestoreResult,
        StoreForgetResult,
        StoreResult,
        TransferResult,
        VersionResult,
    )
    from raftsso.store.model import StoreReport  # the store: only its callers load it

DEFAULT_WRITE_DEADLINE = 15.0
MEMBER_DEADLINE = 30.0
TRANSFER_DEADLINE = 20.0


@record
class BackupWritten:
    """A backup file written and recorded in the cluster (``versions``: their ids)."""

    path: Path
    cluster_id: str
    versions: tuple[VersionId, ...]
    marked: tuple[VersionId, ...]


def _wrong_cluster(cfg: RemoteConfig, theirs: str) -> ConfigError:
    return ConfigError(f"{cfg.path} is for cluster {cfg.cluster_id}, but its nodes serve "
                       f"cluster {theirs}; use the admin.toml of that deployment")


def _quiet(message: str) -> None:
    pass


class AdminClient:
    """Typed admin operations on one deployment; a context manager (closes connections)."""

    def __init__(self, cfg: RemoteConfig) -> None:
        self.cfg = cfg
        self.cluster = ClusterClient.from_config(cfg)
        self._checked = False

    @classmethod
    def from_config(cls, path: str | Path) -> AdminClient:
        return cls(load_remote_config(path))

    def close(self) -> None:
        self.cluster.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def check_cluster(self) -> None:
        """Refuse (:class:`ConfigError`) nodes of another cluster than ``cluster_id``."""
        if self._checked:
            return
        _, ping = self.cluster.request_any(PingRequest(), deadline=self.cfg.timeout)
        if ping.cluster_id is not None and ping.cluster_id != self.cfg.cluster_id:
            raise _wrong_cluster(self.cfg, ping.cluster_id)
        self._checked = True

    # reads ------------------------------------------------------------------------------------

    def status(self, timeout: float | None = None) -> ClusterStatus:
        """Every node's view, combined (``status``); nodes that do not answer in ``timeout``
        are shown unreachable."""
        status = cluster_status.survey(self.cluster, timeout or min(self.cfg.timeout, 2.0))
        if status.cluster_id is not None and status.cluster_id != self.cfg.cluster_id:
            raise _wrong_cluster(self.cfg, status.cluster_id)
        self._checked = True
        return status

    def members(self) -> MembersResult:
        """The members as the leader sees them (match indexes, lags, contact times)."""
        from raftsso.protocol.messages import MembersRequest

        self.check_cluster()
        return self.cluster.request_leader(MembersRequest(require_leader=True))

    # keyring writes ---------------------------------------------------------------------------

    def rotate(self, *, now: bool = False, expect_primary: int | None = None,
               deadline: float = DEFAULT_WRITE_DEADLINE) -> VersionResult:
        """A new master secret version, staged (or primary with ``now``); with
        ``expect_primary``, only if the primary is still that version."""
        from raftsso.protocol.messages import RotateRequest

        self.check_cluster()
        expect = None if expect_primary is None else _version(expect_primary)
        return self.cluster.request_leader(RotateRequest(now=now, expect_primary=expect),
                                           deadline=deadline)

    def retire(self, version: int, *, force: bool = False) -> VersionResult:
        """Destroy ``version``'s key material (check the stores first: see the CLI)."""
        from raftsso.protocol.messages import RetireRequest

        self.check_cluster()
        return self.cluster.request_leader(RetireRequest(_version(version), force))

    def backup(self, out: Path, password: bytes, *, reminder: str = "",
               overwrite: bool = False) -> BackupWritten:
        """Write every non-retired version to a password-protected file (0600, atomic) and
        record in the cluster that it is backed up.

        The keyring comes from the leader past its barrier, so the file holds every
        committed version.
        """
        from raftsso import backup as backups
        from raftsso.protocol.messages import BackedUpRequest, KeyringRequest

        backups.check_password(password)
        if out.exists() and not overwrite:
            raise ConfigError(f"{out} exists; choose another name or pass --overwrite")
        self.check_cluster()
        ring = self.cluster.request_leader(KeyringRequest(require_leader=True))
        versions = [backups.BackupVersion(v.info.id, v.info.state.value, v.info.fingerprint,
                                          v.info.created, v.key) for v in ring.versions]
        blob = backups.write_backup(password, cluster_id=ring.cluster_id,
                                    primary=ring.primary, versions=versions, reminder=reminder)
        atomic_write(out, blob, mode=0o600)
        marked = self.cluster.request_leader(BackedUpRequest(
            {VersionId(v.id): v.fingerprint for v in versions}))
        return BackupWritten(out, ring.cluster_id, tuple(VersionId(v.id) for v in versions),
                             marked.marked)

    def restore(self, info: backups.BackupInfo, *, force: bool = False) -> RestoreResult:
        """Merge an opened backup's versions into the cluster (never drops or overwrites a
        newer version); ``force`` admits another cluster's backup."""
        from raftsso.protocol.messages import RestoreRequest, RestoreVersion

        self.check_cluster()
        versions = tuple(RestoreVersion(_version(v.id), v.key, v.fingerprint, v.created)
                         for v in info.versions if v.key is not None)
        primary = None if info.primary is None else _version(info.primary)
        return self.cluster.request_leader(RestoreRequest(info.cluster_id, versions, primary,
                                                          force))

    # certificates (issue 15) ---------------------------------------------------------------

    def certs(self) -> CertsResult:
        """Every certificate registered with the cluster or revoked (the leader's view)."""
        from raftsso.protocol.messages import CertsRequest

        self.check_cluster()
        return self.cluster.request_leader(CertsRequest(require_leader=True))

    def cert_register(self, info: CertInfo) -> CertRegisterResult:
        """Register a certificate made by ``certs issue`` (so ``certs list`` shows it and
        ``certs revoke NAME`` finds it)."""
        from raftsso.protocol.messages import CertRegisterRequest

        self.check_cluster()
        return self.cluster.request_leader(CertRegisterRequest(
            info.serial, info.name, info.role, info.not_after))

    def cert_revoke(self, target: str, *, name: str = "") -> CertRevokeResult:
        """Revoke every registered certificate named ``target``, or the serial ``target``
        (``name``: the name of a serial the cluster never registered, for the record)."""
        from raftsso.protocol.messages import CertRevokeRequest

        self.check_cluster()
        return self.cluster.request_leader(CertRevokeRequest(target, name))

    # membership and leadership -------------------------------------------------------------

    def member_add(self, node: str, raft_address: str,
                   service_address: str | None = None) -> MemberChangeResult:
        """Add ``node`` (start it first); its service address defaults to the Raft port + 1,
        as ``init`` lays nodes out."""
        from raftsso.protocol.messages import MemberAddRequest

        host, port = split_address(raft_address)
        request = MemberAddRequest(_node(node), raft_address,
                                   service_address or f"{host}:{port + 1}")
        self.check_cluster()
        return self.cluster.request_leader(request, deadline=MEMBER_DEADLINE)

    def member_remove(self, node: str) -> MemberChangeResult:
        """Remove ``node`` for good (its id can never rejoin)."""
        from raftsso.protocol.messages import MemberRemoveRequest

        self.check_cluster()
        return self.cluster.request_leader(MemberRemoveRequest(_node(node)),
                                           deadline=MEMBER_DEADLINE)

    def transfer_leader(self, node: str) -> TransferResult:
        """Make ``node`` the leader and wait until it is."""
        from raftsso.protocol.messages import TransferLeaderRequest

        self.check_cluster()
        return self.cluster.request_leader(TransferLeaderRequest(_node(node)),
                                           deadline=TRANSFER_DEADLINE)

    # the stores known to the cluster ---------------------------------------------------------

    def stores(self) -> list[KnownStore]:
        """The SSO stores known to the cluster (the leader's view), by id."""
        from raftsso.protocol.messages import StoresRequest

        self.check_cluster()
        return list(self.cluster.request_leader(StoresRequest()).stores)

    def store_report(self, report: StoreReport, *, full: bool = True) -> StoreResult:
        """Tell the cluster which versions a store uses (``rewrap``, ``retire --store``);
        a full count needs an admin certificate."""
        from raftsso.protocol.messages import StoreReportRequest

        self.check_cluster()
        return self.cluster.request_leader(StoreReportRequest(
            report.store_id, report.kind, report.counted_at, dict(report.versions_in_use),
            full))

    def store_forget(self, store_id: str) -> StoreForgetResult:
        """Drop a store the cluster knows (it is gone, or was reported by mistake)."""
        from raftsso.known_stores import store_id_problem
        from raftsso.protocol.messages import StoreForgetRequest

        problem = store_id_problem(store_id)
        if problem:
            raise RaftssoError(f"{store_id!r} is not a store id: {problem}")
        self.check_cluster()
        return self.cluster.request_leader(StoreForgetRequest(store_id))


    # the seal --------------------------------------------------------------------------------

    def _endpoint(self, node: str) -> Endpoint:
        found = next((e for e in self.cfg.nodes if e.id == node), None)
        if found is None:
            raise ConfigError(f"{self.cfg.path} lists no node {node!r} (it lists "
                              f"{', '.join(e.id for e in self.cfg.nodes)})")
        return found

    def seal_status(self, node: str) -> SealView:
        """``node``'s seal (kind, sealed, generations held, unseal progress)."""
        status = self.cluster.request_node(self._endpoint(node).address, StatusRequest())
        if status.seal is None:
            raise RaftssoError(f"{node} runs a raftsso without seal providers; upgrade it")
        return status.seal

    def unseal(self, node: str, share_file: Path) -> SealView:
        """Give ``node`` one unseal share (read from a 0600 share file, checked here first);
        the share goes over admin mTLS only and is never logged."""
        from raftsso.protocol.messages import UnsealRequest
        from raftsso.seal.shares import read_share_file  # (AES-GCM: only when needed)

        share = read_share_file(share_file)
        self.check_cluster()
        return self.cluster.request_node(self._endpoint(node).address,
                                         UnsealRequest(share.encode()))

    def rekey_seal(self, *, shares_dir: Path | None = None, shares: int | None = None,
                   threshold: int | None = None, progress: Callable[[str], None] = _quiet,
                   ) -> SealRekeyed:
        """Replace the cluster's seal key (:mod:`raftsso.node.seal_ops` has the protocol).

        Every node must answer and be unsealed: each gets the new key (file: into its key
        file; pkcs11: imported into its token; shamir: new shares are written to
        ``shares_dir`` first, ``shares``/``threshold`` as before unless given). Then the
        leader re-seals every live version through the log, and every node destroys the
        old key and compacts. Run again after an interruption: a rekey whose reseal
        committed is finished (old keys destroyed), one that did not starts over.
        """
        from raftsso.protocol.messages import ResealRequest, SealInstallRequest
        from raftsso.seal import rekey

        self.check_cluster()
        views = self._seal_views()
        current = max(v.seal_generation for v in views.values())
        kinds = {v.kind for v in views.values()}
        if len(kinds) != 1:
            raise RaftssoError(f"the nodes use different seals ({', '.join(sorted(kinds))}); "
                               "a rekey needs one kind")
        kind = kinds.pop()
        files: list[Path] = []
        if all(current in v.generations for v in views.values()) and \
                any(g < current for v in views.values() for g in v.generations):
            progress(f"the seal rekey to generation {current} committed already; finishing it")
            new = current
        else:
            new = current + 1
            key = rekey.new_seal_key()
            if kind == "shamir":
                files = self._write_shares(key, new, shares_dir, shares, threshold)
                progress(f"wrote {len(files)} unseal shares of generation {new} to "
                         f"{files[0].parent}")
            for node in views:
                self.cluster.request_node(self._endpoint(node).address,
                                          SealInstallRequest(new, key))
                progress(f"{node}: holds seal generation {new}")
            del key
            result = self.cluster.request_leader(ResealRequest(new),
                                                 deadline=DEFAULT_WRITE_DEADLINE)
            progress(f"every live version re-sealed under generation {result.generation}: "
                     f"{', '.join(map(str, result.versions)) or 'none'}")
        for node in views:
            self._forget_older(node, new)
            progress(f"{node}: older seal keys destroyed, log compacted")
        return SealRekeyed(new, kind, tuple(files))

    def _seal_views(self) -> dict[str, SealView]:
        status = self.status()
        views: dict[str, SealView] = {}
        for row in status.nodes:
            if not row.reachable or row.seal is None:
                raise RaftssoError(f"{row.id} does not answer (or runs an older raftsso): "
                                   "every node must take the new seal key; start it first")
            if row.seal.sealed:
                raise RaftssoError(f"{row.id} is sealed: unseal it first (raftsso unseal "
                                   f"{row.id} --share-file FILE)")
            views[row.id] = row.seal
        return views

    def _write_shares(self, key: bytes, generation: int, shares_dir: Path | None,
                      shares: int | None, threshold: int | None,
                      ) -> list[Path]:
        from raftsso.seal.shares import ensure_share_dir, make_shares, write_share_file

        if shares is None or threshold is None:
            raise ConfigError("a shamir rekey needs --shares and --threshold (the new split)")
        if not 1 <= threshold <= shares or (threshold == 1 and shares > 1):
            raise ConfigError("--threshold must be from 2 to --shares (or 1 of 1 for a test)")
        directory = shares_dir or self.cfg.path.parent / f"seal-shares-g{generation}"
        ensure_share_dir(directory)
        out = []
        for share in make_shares(key, cluster_id=self.cfg.cluster_id, generation=generation,
                                 shares=shares, threshold=threshold):
            path = directory / f"share-{share.index}.txt"
            write_share_file(path, share)
            out.append(path)
        return out

    def _forget_older(self, node: str, generation: int) -> None:
        """Destroy every generation older than ``generation`` on ``node`` once it has
        applied the reseal (a follower may lag a moment)."""
        from raftsso.protocol.messages import SealForgetRequest

        address = self._endpoint(node).address
        deadline = time.monotonic() + DEFAULT_WRITE_DEADLINE
        while True:
            view = self.seal_status(node)
            if view.seal_generation >= generation:
                break
            if time.monotonic() >= deadline:
                raise RaftssoError(f"{node} has not applied the reseal yet; run rekey-seal "
                                   "again to finish")
            time.sleep(0.1)
        for old in (g for g in view.generations if g < generation):
            self.cluster.request_node(address, SealForgetRequest(old),
                                      timeout=DEFAULT_WRITE_DEADLINE)
        if not any(g < generation for g in view.generations):
            # Nothing left to destroy; still compact so no old blob stays in the files.
            self.cluster.request_node(address, SealForgetRequest(generation - 1),
                                      timeout=DEFAULT_WRITE_DEADLINE)


@record
class SealRekeyed:
    """A finished seal rekey: the new generation, the seal kind, new share files."""

    generation: int
    kind: str
    share_files: tuple[Path, ...]


def _node(value: str) -> NodeId:
    try:
        return node_id(value)
    except ValueError as exc:
        raise RaftssoError(f"{value!r} is not a node id: {exc}") from None


def _version(value: int) -> VersionId:
    try:
        return version_id(value)
    except ValueError as exc:
        raise RaftssoError(f"{value} is not a version id: {exc}") from None
