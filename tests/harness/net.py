"""Where the nodes of a test cluster live, and how one is cut off from the others.

:class:`LoopbackNet`: every node on 127.0.0.1 with its own ports; "cut off" means SIGSTOP
(the node is then unreachable for its peers *and* for clients).

:class:`NamespaceNet` gives every node its own network namespace (its own "host") on a
bridge, with names and a subnet chosen per run so that several runs (a long chaos run in
the background, CI, the partition test) can coexist::

    root namespace (the test: clients, admin, nemesis; GATEWAY on bridge PREFIXb)
      ├── PREFIXv1 ══ veth ══ namespace PREFIXn1: 10.A.B.11  node1
      ├── PREFIXv2 ══ veth ══ namespace PREFIXn2: 10.A.B.12  node2
      └── ...

Every node listens on its own address with the same ports (a deployment made by
``init_deployment(hosts=...)``: certificates name each node's IP). A node is *cut off* with
policy rules inside its own namespace (``ip rule add to PEER blackhole`` and ``from PEER
blackhole`` for every other node, before the ``local`` table, which is moved from priority
0 to 100 when the namespace is made). The test process (the gateway address) still
reaches every node, so SSO clients keep talking to a cut-off node and see whatever it
serves: the harshest case for "a client never goes back", and how a test watches a
cut-off leader refuse writes.

Everything created here is removed by :meth:`NamespaceNet.close`. A run killed before it
could clean up leaves a state file in ``STATE_DIR`` naming its prefix and pid; the next
run deletes the leftovers of every prefix whose pid is gone (never those of a live run).

Only iproute2 is needed (no iptables). :func:`make_net` falls back to :class:`LoopbackNet`
when namespaces cannot be made (not root, no ``ip``, no CAP_SYS_ADMIN).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

STATE_DIR = Path("/tmp/raftsso-chaos-netns")
_NAME_START = "rsc"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=check)


def namespaces_available() -> str | None:
    """None if network namespaces can be made here, else the reason why not."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"{_NAME_START}probe{os.getpid() % 10000}"
    _ip("netns", "del", probe, check=False)
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _delete_prefix(prefix: str) -> None:
    """Delete every link and namespace whose name starts with ``prefix``."""
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@", 1)[0]
        if name.startswith(prefix):
            _ip("link", "del", name, check=False)
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        fields = line.split()
        if fields and fields[0].startswith(prefix):
            _ip("netns", "del", fields[0], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_runs() -> list[str]:
    """Remove what runs that died without cleaning up left behind; returns their prefixes."""
    cleaned: list[str] = []
    if not STATE_DIR.is_dir():
        return cleaned
    for state in STATE_DIR.iterdir():
        try:
            pid = int(state.read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid > 0 and _pid_alive(pid):
            continue
        _delete_prefix(state.name)
        with contextlib.suppress(OSError):
            state.unlink()
        cleaned.append(state.name)
    return cleaned


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    out = _ip("-o", "-4", "addr", "show", check=False).stdout + \
        _ip("-4", "route", "show", "table", "all", check=False).stdout
    for token in out.split():
        if "/" in token and token[0].isdigit():
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(token, strict=False))
    return nets


class LoopbackNet:
    """No namespaces: every node on 127.0.0.1; "cut off" means SIGSTOP (see module doc)."""

    kind = "sigstop"

    def __init__(self, nodes: int = 0, reason: str | None = None) -> None:
        self.nodes = nodes
        self.reason = reason  # why namespaces are not used (None: asked for SIGSTOP)

    def hosts(self) -> list[str] | None:
        return None  # init_deployment(host=127.0.0.1) with distinct ports

    def command_prefix(self, index: int) -> list[str]:
        return []

    def close(self) -> None:
        pass


class NamespaceNet:
    """One network namespace per node on a private bridge (see the module docstring)."""

    kind = "netns"

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.prefix = f"{_NAME_START}{secrets.token_hex(2)}"
        self._cut: set[int] = set()
        used = _used_networks()
        for _ in range(200):
            net = ipaddress.IPv4Network(
                f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24")
            if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
                break
        else:
            raise RuntimeError("no free 10.x.y.0/24 subnet for the chaos network")
        self.network = net
        base = int(net.network_address)
        self.gateway = str(ipaddress.IPv4Address(base + 1))
        self._hosts = [str(ipaddress.IPv4Address(base + 11 + i)) for i in range(nodes)]
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        (STATE_DIR / self.prefix).write_text(str(os.getpid()))
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def namespace(self, index: int) -> str:
        return f"{self.prefix}n{index + 1}"

    def hosts(self) -> list[str]:
        return list(self._hosts)

    def command_prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(index)]

    def _build(self) -> None:
        bridge = f"{self.prefix}b"
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, address in enumerate(self._hosts):
            ns, outer, inner = self.namespace(i), f"{self.prefix}v{i + 1}", f"{self.prefix}p{i + 1}"
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", bridge, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            # The local table (rule 0) would accept packets for this host before a
            # blackhole rule could drop them: move it behind the rules the cut uses.
            _ip("-n", ns, "rule", "add", "pref", "100", "lookup", "local")
            _ip("-n", ns, "rule", "del", "pref", "0")

    def _rules(self, index: int) -> list[list[str]]:
        rules = []
        for j, peer in enumerate(self._hosts):
            if j != index:
                rules.append(["pref", str(10 + 2 * j), "to", f"{peer}/32", "blackhole"])
                rules.append(["pref", str(11 + 2 * j), "from", f"{peer}/32", "blackhole"])
        return rules

    def cut(self, indices: Sequence[int]) -> None:
        """Cut each node in ``indices`` off from every other node (both directions)."""
        for index in indices:
            if index in self._cut:
                continue
            for rule in self._rules(index):
                _ip("-n", self.namespace(index), "rule", "add", *rule)
            self._cut.add(index)

    def heal(self) -> None:
        for index in sorted(self._cut):
            for rule in self._rules(index):
                _ip("-n", self.namespace(index), "rule", "del", *rule, check=False)
        self._cut.clear()

    def close(self) -> None:
        _delete_prefix(self.prefix)
        with contextlib.suppress(OSError):
            (STATE_DIR / self.prefix).unlink()

    def leftovers(self) -> list[str]:
        names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
                 if line.split() and line.split()[0].startswith(self.prefix)]
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            parts = line.split(":", 2)
            if len(parts) >= 2 and parts[1].strip().split("@", 1)[0].startswith(self.prefix):
                names.append(parts[1].strip())
        return names


Net = LoopbackNet | NamespaceNet


def make_net(nodes: int, mode: str = "auto") -> Net:
    """``mode``: ``auto`` (namespaces if possible), ``netns`` (required) or ``sigstop``."""
    if mode == "sigstop":
        return LoopbackNet(nodes)
    reason = namespaces_available()
    if reason is None:
        clean_stale_runs()
        try:
            return NamespaceNet(nodes)
        except subprocess.CalledProcessError as exc:  # e.g. no bridge or veth support
            reason = f"{' '.join(exc.cmd)}: {(exc.stderr or '').strip()}"
    if mode == "netns":
        raise RuntimeError(f"network namespaces are not available: {reason}")
    return LoopbackNet(nodes, reason)
