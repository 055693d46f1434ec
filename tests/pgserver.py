"""A throwaway PostgreSQL server for tests and benchmarks: initdb into a temp dir, pg_ctl on a
free loopback port below 32768, a role and a database with a password; stopped and removed
afterwards. No mock: the real server binaries of the machine (Debian's postgresql package).

As root, the server runs as an unprivileged user (``postgres`` if it exists, else one made
for the purpose): PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROLE = "raftsso"
DATABASE = "sso"
SUPERUSER = "postgres"


def find_bin_dir() -> Path | None:
    """The directory of initdb/pg_ctl/postgres (newest version), or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    for d in reversed(dirs):
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    return None


def _free_port() -> int:
    for _ in range(200):
        port = random.randrange(15000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below 32768")


def _server_user() -> str | None:
    """Who runs the server: None (this user) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        pass
    name = "raftsso-pgtest"
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        return name
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    return name


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    password_file: Path  # the role's password, 0600, owned by the test's user
    superuser_password: str
    user: str | None

    @property
    def ca_file(self) -> Path:
        """The CA of the server's TLS certificate (for sslmode=verify-full)."""
        return self.root / "ca.pem"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def uri(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def env(self, superuser: bool = False) -> dict[str, str]:
        """Environment for libpq tools (psql, pg_dump) run by the test."""
        password = (self.superuser_password if superuser
                    else self.password_file.read_text().strip())
        return {**os.environ, "PGPASSWORD": password, "PGHOST": "127.0.0.1",
                "PGPORT": str(self.port), "PGUSER": SUPERUSER if superuser else ROLE,
                "PGDATABASE": DATABASE, "PGCONNECT_TIMEOUT": "10"}

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def psql(self, sql: str, *, superuser: bool = False, database: str = DATABASE) -> str:
        result = subprocess.run([self.tool("psql"), "-X", "-q", "-t", "-A", "-v",
                                 "ON_ERROR_STOP=1", "-d", database, "-c", sql],
                                env=self.env(superuser), capture_output=True, text=True,
                                timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def _as_server_user(self, argv: list[str], timeout: float = 120) -> None:
        result = subprocess.run(argv, user=self.user, capture_output=True, text=True,
                                timeout=timeout, check=False, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {result.stderr.strip()[-2000:]}")

    def start(self) -> None:
        self._as_server_user([self.tool("pg_ctl"), "-D", str(self.data_dir), "-l",
                              str(self.root / "server.log"), "-w", "-t", "60", "start"])

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._as_server_user([self.tool("pg_ctl"), "-D", str(self.data_dir), "-m", mode,
                                  "-w", "-t", "60", "stop"])

    def reset(self) -> None:
        """Drop and recreate the database (a fresh, empty store)."""
        self.psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)", superuser=True,
                  database="postgres")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}", superuser=True,
                  database="postgres")


def _tls_files(server: PostgresServer) -> None:
    """A CA (root/ca.pem) and a server certificate for 127.0.0.1 in the data directory."""
    from raftsso import pki

    ca = pki.create_ca("pgtest")
    leaf = pki.issue(ca, "127.0.0.1", "node", hosts=("127.0.0.1",))
    server.ca_file.write_bytes(ca.cert_pem)
    for name, data in (("server.crt", leaf.cert_pem), ("server.key", leaf.key_pem)):
        path = server.data_dir / name
        path.write_bytes(data)
        path.chmod(0o600)
        if server.user is not None:
            pw = pwd.getpwnam(server.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)


def start_server(*, fsync: bool = True) -> PostgresServer:
    """initdb, start, create the role and database; the caller stops it (:func:`stop_server`)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (install Debian's postgresql)")
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="raftsso-pg-"))
    try:
        root.chmod(0o700)
        superuser_password = secrets.token_urlsafe(18)
        (root / "su.pw").write_text(superuser_password + "\n")
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(root, pw.pw_uid, pw.pw_gid)
            os.chown(root / "su.pw", pw.pw_uid, pw.pw_gid)
        server = PostgresServer(bin_dir, root, _free_port(), Path(), superuser_password, user)
        server._as_server_user([server.tool("initdb"), "-D", str(server.data_dir), "-U",
                                SUPERUSER, "--auth=scram-sha-256", "--pwfile",
                                str(root / "su.pw"), "--no-sync", "-E", "UTF8",
                                "--locale=C"])
        (root / "su.pw").unlink()
        _tls_files(server)
        with (server.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {server.port}\n"
                       "unix_socket_directories = ''\nmax_connections = 200\n"
                       f"fsync = {'on' if fsync else 'off'}\n"
                       "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        server.start()
        password = secrets.token_urlsafe(18)
        fd, name = tempfile.mkstemp(prefix="raftsso-pg-password-")
        os.write(fd, password.encode() + b"\n")
        os.close(fd)
        server.password_file = Path(name)
        server.password_file.chmod(0o600)
        server.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'", superuser=True,
                    database="postgres")
        server.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}", superuser=True,
                    database="postgres")
        return server
    except BaseException:
        with contextlib.suppress(Exception):
            subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m",
                            "immediate", "stop"], user=user, capture_output=True, timeout=60,
                           check=False)
        shutil.rmtree(root, ignore_errors=True)
        raise


def stop_server(server: PostgresServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)
    with contextlib.suppress(OSError):
        server.password_file.unlink()


@contextlib.contextmanager
def postgres_server(*, fsync: bool = True) -> Iterator[PostgresServer]:
    server = start_server(fsync=fsync)
    try:
        yield server
    finally:
        stop_server(server)
