"""Client load: simulated SSO clients fetching the keyring from one node.

Load generator: ``WORKERS`` processes (spawned, so the generator is not one GIL), each an
asyncio loop with its own mTLS connections (the cluster's ``client`` certificate). Requests
are real ``keyring`` frames carrying a per-client ``client_id``, exactly what
``SSOClient`` sends; answers are decoded and checked.

All load goes to ``node1``: every SSOClient prefers the first node of its configuration
and only moves on failure, so in a deployment with one ``client.toml`` the first node takes
every fetch. That node's CPU (1.0 = one core) and RSS are read from /proc/PID/stat and
/proc/PID/status, so are the other nodes' and the generator processes' CPU.

Two measurements, the ramp first on a fresh node, then the clients (whose connections
leave their memory in the node).

**Ramp**: the node under open-loop load at increasing rates. Each worker holds ``POOL``
persistent connections (a pool: a request takes an idle connection, or waits for one) and
issues requests on a fixed schedule; latency is measured from the *scheduled* time, so a
generator or node that falls behind shows up as latency (no coordinated omission). A step
is *sustained* when at least 99 % of its requests complete within the step plus 1 s, none
fails, and p99 < 50 ms. The ramp stops at the first step that is not sustained (retried
once); when it stopped below ``TARGET_RATE`` (10,000/s, issue 16's p99 target), one more
step at exactly that rate (run after the closed loop below) gives the p99 there. A closed loop
(``SATURATE_CONNECTIONS`` connections per process fetching back to back, on their own
non-blocking TLS sockets, a lighter client than asyncio's streams) gives the most the node
serves flat out. What limits the number is printed from
that measurement: the target node's CPU (one asyncio thread can use at most one core)
against the generator's, the other nodes' and the machine's (every process, /proc/stat) on
2 cores. ``lag`` is how late the generator launched requests.

**New connections**: each generator process runs ``CHURN_THREADS`` threads that connect,
fetch the keyring once and close, back to back, first with full handshakes, then offering
the TLS session of their last connection (TLS 1.3 ticket) as ``raftsso.remote`` does
(asyncio cannot pass a session, so these are blocking ``ssl`` sockets).

**Clients**: ``CLIENTS`` (10,000) simulated clients, each with *its own* persistent mTLS
connection (what SSOClient keeps: one connection per node it talked to; the node's
``idle_timeout`` of 300 s outlives a 60 s resync). Each client's first fetch is at a
uniformly random phase of the 60 s interval, then every 60 s x U(0.9, 1.1), which is ~167
fetches/s in steady state; the phase is measured for ``CLIENT_PHASE_S`` seconds, with the
node's RSS before and with the connections open.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import resource
import struct
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

from bench.common import (
    CpuMeter,
    ElectionCounter,
    local_cluster,
    ms,
    print_table,
    proc_cpu_seconds,
    proc_nofile,
    proc_rss_mib,
)
from bench.stats import percentile

WORKERS = 2
POOL = 32
CLIENTS = 10_000
CLIENT_INTERVAL = 60.0
CLIENT_PHASE_S = 20.0
RAMP = [250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000]
STEP_S = 4.0
SUSTAINED_P99 = 0.05
TARGET_RATE = 10_000  # issue 16: keyring fetch p99 <= 5 ms at this offered rate
SATURATE_CONNECTIONS = 8  # per generator process, for the closed-loop measurement
CHURN_THREADS = 4  # per generator process: blocking TLS clients opening connections
# Send the index held, as SSOClient does since the "unchanged" answer (RAFTSSO_BENCH_KNOWN=0:
# every fetch asks for the whole keyring, as older clients did).
KNOWN = os.environ.get("RAFTSSO_BENCH_KNOWN", "1") != "0"
_LEN = struct.Struct(">I")


# -- the worker process -----------------------------------------------------------------


class _Conn:
    __slots__ = ("cid", "known", "n", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 cid: str) -> None:
        self.reader, self.writer, self.cid, self.n = reader, writer, cid, 0
        self.known: int | None = None  # the commit_index held, sent as SSOClient does


class _Worker:
    def __init__(self, address: str, ca: str, cert: str, key: str, index: int) -> None:
        from raftsso.pki import client_context

        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.ctx = client_context(*map(__import__("pathlib").Path, (ca, cert, key)))
        self.index = index
        self.conns: list[_Conn] = []
        self.opened = 0

    async def _open(self, cid: str) -> _Conn:
        # Simulated clients come from many hosts: spread them over 127.<w+1>.x.y (Linux
        # routes all of 127/8 to loopback), 64 per address, so that the node's
        # connections-per-source cap ([limits] max_per_source) sees real-looking sources.
        n = self.opened // 64
        self.opened += 1
        local = (f"127.{self.index + 1}.{(n >> 8) & 255}.{(n & 255) or 1}", 0) \
            if self.host.startswith("127.") else None
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.ctx, server_hostname=self.host, limit=1 << 20,
            local_addr=local)
        return _Conn(reader, writer, cid)

    async def connect(self, n: int, prefix: str) -> dict[str, Any]:
        await self.close_all()
        sem = asyncio.Semaphore(32)
        errors = 0

        async def one(i: int) -> _Conn | None:
            nonlocal errors
            async with sem:
                try:
                    return await self._open(f"{prefix}-{self.index}-{i}")
                except (TimeoutError, OSError):
                    errors += 1
                    return None

        t = time.perf_counter()
        got = await asyncio.gather(*(one(i) for i in range(n)))
        self.conns = [c for c in got if c is not None]
        return {"connected": len(self.conns), "errors": errors,
                "seconds": time.perf_counter() - t}

    async def close_all(self) -> None:
        for c in self.conns:
            c.writer.close()
        for c in self.conns:
            with contextlib.suppress(Exception):  # closing is best effort
                await asyncio.wait_for(c.writer.wait_closed(), 1)
        self.conns = []

    async def fetch(self, conn: _Conn) -> None:
        from raftsso.wire import decode_body, encode_frame

        conn.n += 1
        args: dict[str, Any] = {"client_id": conn.cid}
        if conn.known is not None and KNOWN:
            args["known"] = conn.known
        conn.writer.write(encode_frame({"id": conn.n, "op": "keyring", "args": args}))
        header = await conn.reader.readexactly(4)
        (length,) = _LEN.unpack(header)
        answer = decode_body(await conn.reader.readexactly(length))
        if answer.get("id") != conn.n or answer.get("ok") is not True:
            raise RuntimeError(f"bad answer: {answer.get('error')}")
        result = answer["result"]
        if not result.get("versions") and not (result.get("unchanged")
                                               and conn.known is not None):
            raise RuntimeError("keyring without versions")
        conn.known = result["commit_index"]

    async def churn(self, start_at: float, duration: float, threads: int,
                    resume: bool) -> dict[str, Any]:
        """New connections back to back: each of ``threads`` blocking TLS sockets (threads,
        not asyncio: asyncio cannot pass a TLS session to resume) connects, fetches the
        keyring once and closes, as a restarted SSOClient does; with ``resume`` each
        reconnect offers the session of its thread's last connection (TLS 1.3 ticket), as
        raftsso.remote does."""
        import socket
        import threading

        from raftsso.wire import decode_body, encode_frame

        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = time.monotonic() + duration
        latencies: list[float] = []
        errors: list[str] = []
        reused = [0]
        lock = threading.Lock()
        frame = encode_frame({"id": 1, "op": "keyring", "args": {"client_id": "churn"}})

        def recv_exact(tls: Any, n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = tls.recv(n - len(data))
                if not chunk:
                    raise ConnectionError("closed by the node")
                data += chunk
            return data

        def run(k: int) -> None:
            session = None
            n = 0
            while time.monotonic() < end:
                n += 1
                t = time.monotonic()
                try:
                    raw = socket.create_connection((self.host, self.port), timeout=10,
                                                   source_address=(
                                                       f"127.{self.index + 1}.200.{k + 1}", 0)
                                                   if self.host.startswith("127.") else None)
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as remote.py
                    with self.ctx.wrap_socket(raw, server_hostname=self.host,
                                              session=session if resume else None) as tls:
                        tls.sendall(frame)
                        (length,) = _LEN.unpack(recv_exact(tls, 4))
                        answer = decode_body(recv_exact(tls, length))
                        if answer.get("ok") is not True:
                            raise RuntimeError(f"bad answer: {answer.get('error')}")
                        session = tls.session
                        with lock:
                            reused[0] += bool(tls.session_reused)
                            latencies.append(time.monotonic() - t)
                except Exception as exc:
                    session = None
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}"[:120])

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(loop.run_in_executor(None, run, k) for k in range(threads)))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        return {"scheduled": len(latencies), "completed": len(latencies), "unfinished": 0,
                "errors": len(errors), "error_examples": errors[:3], "latencies": latencies,
                "lag_p99": 0.0, "reused": reused[0],
                "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)}

    async def clients(self, start_at: float, duration: float, interval: float,
                      seed: int) -> dict[str, Any]:
        """Every connection is one client: first fetch at a random phase, then every
        interval x U(0.9, 1.1); only fetches due within ``duration`` are made."""
        rnd = random.Random(seed)
        loop = asyncio.get_running_loop()
        base = loop.time() + (start_at - time.time())
        schedule: list[tuple[float, int]] = []
        for i in range(len(self.conns)):
            t = rnd.uniform(0, interval)
            while t < duration:
                schedule.append((t, i))
                t += interval * rnd.uniform(0.9, 1.1)
        schedule.sort()
        return await self._drive(base, [(base + t, i) for t, i in schedule], duration,
                                 pooled=False)

    async def step(self, start_at: float, rate: float, duration: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        base = loop.time() + (start_at - time.time())
        n = int(rate * duration)
        # Workers interleave their schedules so the combined arrivals stay evenly spaced.
        offset = self.index / (rate * WORKERS)
        return await self._drive(base, [(base + offset + k / rate, -1) for k in range(n)],
                                 duration, pooled=True)

    async def saturate(self, start_at: float, duration: float,
                       connections: int) -> dict[str, Any]:
        """Closed loop: ``connections`` fetch back to back for ``duration``. A lighter client
        than the ramp's: non-blocking TLS sockets driven by loop callbacks (over asyncio's
        streams the generator spent more CPU per fetch than the node, and on 2 cores it
        shares, that set the rate more than the node did)."""
        import socket
        import ssl

        from msgpack import packb, unpackb

        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        errors: list[str] = []
        socks = []
        for _ in range(connections):
            raw = socket.create_connection((self.host, self.port), timeout=10)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(self.ctx.wrap_socket(raw, server_hostname=self.host))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = loop.time() + duration
        done = loop.create_future()
        open_ = [len(socks)]
        buf = bytearray(1 << 16)

        def driver(tls: ssl.SSLSocket, cid: str) -> None:
            # Lean on purpose (issue 16.3: at 20,000/s the generator must not take the core
            # the node needs): each request frame is msgpack of a small map, packed in C;
            # an answer is read with one recv when it arrived whole (no second recv to learn
            # that nothing more waits: pending() asks OpenSSL) and unpacked without the
            # node's strict-decoding hooks (the node is trusted here); its id, ok and
            # commit index are still checked on every answer.
            state: list[Any] = [0, None, 0.0, b""]  # request id, known index, sent at, input
            fd = tls.fileno()
            head = {"client_id": cid}

            def send() -> None:
                state[0] += 1
                args = head if state[1] is None or not KNOWN else \
                    {"client_id": cid, "known": state[1]}
                body = b"\x01" + packb({"id": state[0], "op": "keyring", "args": args})
                state[2] = loop.time()
                tls.sendall(_LEN.pack(len(body)) + body)

            def finish(error: str | None = None) -> None:
                if error:
                    errors.append(error[:120])
                loop.remove_reader(fd)
                open_[0] -= 1
                if not open_[0] and not done.done():
                    done.set_result(None)

            def readable() -> None:
                data = state[3]
                try:
                    while True:
                        n = tls.recv_into(buf)
                        if not n:
                            return finish("ConnectionError: closed by the node")
                        data += buf[:n]
                        if not tls.pending():
                            break
                except ssl.SSLWantReadError:
                    pass
                if len(data) < 4 or len(data) < 4 + _LEN.unpack_from(data)[0]:
                    state[3] = data
                    return
                (length,) = _LEN.unpack_from(data)
                if data[4] != 1:
                    return finish("RuntimeError: bad frame format")
                answer = unpackb(data[5:4 + length])
                state[3] = data[4 + length:]
                if answer.get("id") != state[0] or answer.get("ok") is not True:
                    return finish(f"RuntimeError: bad answer: {answer.get('error')}")
                state[1] = answer["result"]["commit_index"]
                now = loop.time()
                latencies.append(now - state[2])
                if now >= end:
                    return finish()
                send()

            tls.setblocking(False)
            loop.add_reader(fd, readable)
            send()

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        for i, tls in enumerate(socks):
            driver(tls, f"raw-{self.index}-{i}")
        await done
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        for tls in socks:
            tls.close()
        return {"scheduled": len(latencies), "completed": len(latencies), "unfinished": 0,
                "errors": len(errors), "error_examples": errors[:3], "latencies": latencies,
                "lag_p99": 0.0,
                "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)}

    async def _drive(self, base: float, schedule: list[tuple[float, int]], duration: float,
                     pooled: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        idle: asyncio.Queue[_Conn] = asyncio.Queue()
        if pooled:
            for c in self.conns:
                idle.put_nowait(c)
        latencies: list[float] = []
        lags: list[float] = []
        errors: list[str] = []
        pending: set[asyncio.Task[None]] = set()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)

        async def request(due: float, who: int) -> None:
            conn = await idle.get() if pooled else self.conns[who]
            try:
                await self.fetch(conn)
                latencies.append(loop.time() - due)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:120])
                if pooled:  # replace the broken connection
                    try:
                        conn = await self._open(conn.cid)
                    except OSError:
                        return
            finally:
                if pooled:
                    idle.put_nowait(conn)

        k = 0
        while k < len(schedule):
            now = loop.time()
            while k < len(schedule) and schedule[k][0] <= now:
                lags.append(now - schedule[k][0])  # how late the generator itself is
                task = loop.create_task(request(*schedule[k]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                k += 1
            if k < len(schedule):
                await asyncio.sleep(max(0.0, min(schedule[k][0] - loop.time(), 0.002)))
        drain_end = base + duration + 1.0
        if pending:
            await asyncio.wait(set(pending), timeout=max(0.0, drain_end - loop.time()))
        unfinished = len(pending)
        for task in list(pending):
            task.cancel()
        if unfinished and pooled:  # cancelled mid-request: those connections are unusable
            await self.connect(len(self.conns), f"pool{self.index}")
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        return {"scheduled": len(schedule), "completed": len(latencies),
                "unfinished": unfinished, "errors": len(errors), "error_examples": errors[:3],
                "latencies": latencies, "lag_p99": percentile(lags, 99) if lags else 0.0,
                "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)}


def _worker_main(pipe: Pipe, address: str, ca: str, cert: str, key: str, index: int) -> None:
    import asyncio.sslproto

    # asyncio gives every TLS connection a 256 KiB read buffer; 5,000 client connections
    # per process would hold 1.25 GiB. The generator only reads small frames.
    asyncio.sslproto.SSLProtocol.max_size = 32 * 1024  # type: ignore[attr-defined]
    async def serve() -> None:
        worker = _Worker(address, ca, cert, key, index)
        loop = asyncio.get_running_loop()
        while True:
            cmd, kwargs = await loop.run_in_executor(None, pipe.recv)
            if cmd == "exit":
                await worker.close_all()
                pipe.send({"pid": os.getpid()})
                return
            pipe.send(await getattr(worker, cmd)(**kwargs))

    asyncio.run(serve())


# -- the driver -------------------------------------------------------------------------


class _Generator:
    def __init__(self, address: str, ca: str, cert: str, key: str, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.procs = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, address, ca, cert, key, i),
                               daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> dict[str, int]:
        return {f"generator{i + 1}": p.pid for i, p in enumerate(self.procs) if p.pid}

    def call(self, cmd: str, **kwargs: Any) -> list[dict[str, Any]]:
        for i, pipe in enumerate(self.pipes):
            per = dict(kwargs)
            if cmd == "connect":
                per["n"] = kwargs["n"] // len(self.pipes) + (
                    1 if i < kwargs["n"] % len(self.pipes) else 0)
            if cmd == "step":
                per["rate"] = kwargs["rate"] / len(self.pipes)
            if cmd == "clients":
                per["seed"] = kwargs["seed"] + i
            pipe.send((cmd, per))
        return [pipe.recv() for pipe in self.pipes]

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit", {}))
                pipe.recv()
            except (OSError, EOFError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)


def _merge(parts: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    lat = [x for p in parts for x in p["latencies"]]
    scheduled = sum(p["scheduled"] for p in parts)
    completed = sum(p["completed"] for p in parts)
    errors = sum(p["errors"] for p in parts)
    return {
        "scheduled": scheduled, "completed": completed, "errors": errors,
        "unfinished": sum(p["unfinished"] for p in parts),
        "error_examples": [e for p in parts for e in p["error_examples"]][:3],
        "achieved_per_s": completed / duration,
        "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99),
        "max_s": max(lat, default=float("nan")),
        "generator_lag_p99_s": max(p["lag_p99"] for p in parts),
        "generator_cpu": round(sum(p["cpu_s"] for p in parts) / duration, 3),
        "_latencies": lat,
    }


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    clients = 200 if quick else CLIENTS
    phase_s = 1.5 if quick else CLIENT_PHASE_S
    interval = 3.0 if quick else CLIENT_INTERVAL
    ramp = [200, 400] if quick else RAMP
    step_s = 0.5 if quick else STEP_S
    out: dict[str, Any] = {"config": {
        "known": KNOWN,
        "target": "node1 (every SSOClient prefers its first configured node)",
        "generator": f"{WORKERS} spawned processes, asyncio, mTLS, real keyring frames",
        "clients": clients, "client_interval_s": interval, "client_jitter": "U(0.9, 1.1)",
        "client_phase_s": phase_s, "client_connections": "one persistent mTLS connection "
        "per simulated client", "ramp_rates_per_s": ramp, "ramp_step_s": step_s,
        "ramp_pool": f"{POOL} persistent connections per generator process "
                     f"({WORKERS * POOL} in all); a request waits for an idle one",
        "sustained": "99% complete within step + 1 s, no error, p99 < 50 ms "
                     "(latency from the scheduled time)",
        "cpus": os.cpu_count()}}
    with local_cluster("load") as cluster:
        elections = ElectionCounter(cluster).start()  # every one of them spurious
        st = cluster.status()
        target = "node1"
        address = cluster.address(target)
        node_pids = {n: cluster.procs[n].pid for n in cluster.ids}
        pid = node_pids[target]
        out["config"]["target_role"] = next(n["role"] for n in st["nodes"]
                                            if n["id"] == target)
        out["config"]["target_nofile_limit"] = proc_nofile(pid)
        root = cluster.root
        gen = _Generator(address, str(root / "ca.pem"), str(root / "client.pem"),
                         str(root / "client.key"), WORKERS)
        try:
            # The ramp first, on a fresh node, over a pool.
            gen.call("connect", n=POOL * WORKERS, prefix="pool")
            steps: list[dict[str, Any]] = []
            lat_by_rate: dict[int, list[float]] = {}
            best = 0.0
            retried = False
            i = 0

            def open_loop_step(rate: int, label: str) -> dict[str, Any]:
                meter = CpuMeter({**node_pids, **gen.pids})
                start_at = time.time() + 0.2
                parts = gen.call("step", start_at=start_at, rate=rate, duration=step_s)
                cpu = meter.read()
                s = _merge(parts, step_s)
                lat_by_rate[rate] = s.pop("_latencies")
                sustained = (s["completed"] >= 0.99 * s["scheduled"] and not s["errors"]
                             and s["p99_s"] < SUSTAINED_P99)
                s.update({"offered_per_s": rate, "sustained": sustained,
                          "node_cpu": cpu[target],
                          "other_nodes_cpu": round(sum(v for k, v in cpu.items()
                                                       if k.startswith("node")
                                                       and k != target), 3),
                          "generator_cpu_proc": round(sum(v for k, v in cpu.items()
                                                          if k.startswith("generator")), 3),
                          "machine_cpu": cpu["machine"],
                          "node_rss_mib": proc_rss_mib(pid)})
                print(f"  {label} {rate:6d}/s: done {s['achieved_per_s']:7.0f}/s  p50 "
                      f"{ms(s['p50_s']):>6} ms  p99 {ms(s['p99_s']):>7} ms  node CPU "
                      f"{s['node_cpu']:.2f}  generator CPU {s['generator_cpu_proc']:.2f}  machine "
                      f"{s['machine_cpu']:.2f}  lag p99 {ms(s['generator_lag_p99_s'])} ms  "
                      f"{'sustained' if sustained else 'NOT sustained'}", flush=True)
                return s

            while i < len(ramp):
                rate = ramp[i]
                s = open_loop_step(rate, "ramp")
                sustained = s["sustained"]
                steps.append(s)
                if sustained:
                    best = max(best, float(rate))
                    i += 1
                    retried = False
                elif not retried:
                    retried = True  # one retry: a hiccup is not a limit
                else:
                    break
            out["ramp"] = steps
            # Closed loop: what the node serves flat out, and who is busy then.
            meter = CpuMeter({**node_pids, **gen.pids})
            parts = gen.call("saturate", start_at=time.time() + 0.2, duration=step_s,
                             connections=SATURATE_CONNECTIONS)
            cpu = meter.read()
            sat = _merge(parts, step_s)
            sat_lat = sat.pop("_latencies")
            sat.update({"connections": SATURATE_CONNECTIONS * WORKERS,
                        "node_cpu": cpu[target], "machine_cpu": cpu["machine"],
                        "other_nodes_cpu": round(sum(v for k, v in cpu.items()
                                                     if k.startswith("node")
                                                     and k != target), 3),
                        "generator_cpu_proc": round(sum(v for k, v in cpu.items()
                                                        if k.startswith("generator")), 3)})
            out["saturation"] = sat
            print(f"  closed loop, {SATURATE_CONNECTIONS * WORKERS} connections back to back: "
                  f"{sat['achieved_per_s']:.0f}/s, p50 {ms(sat['p50_s'])} ms, p99 "
                  f"{ms(sat['p99_s'])} ms, node CPU {sat['node_cpu']:.2f}, generator CPU "
                  f"{sat['generator_cpu_proc']:.2f}, machine {sat['machine_cpu']:.2f} of "
                  f"{os.cpu_count()} cores", flush=True)
            # Issue 16's latency target is at exactly TARGET_RATE/s: measured there even when
            # the ramp stopped below it (the ramp's last sustained step says nothing of it);
            # after the closed loop, so that an overloaded step cannot disturb that one.
            tried = [s for s in steps if s["offered_per_s"] == TARGET_RATE]
            at_target = next((s for s in tried if s["sustained"]), tried[-1] if tried else None)
            if at_target is None:
                at_target = open_loop_step(TARGET_RATE, "fixed")
                at_target["ramp_step"] = False
            else:
                at_target = {**at_target, "ramp_step": True}
            out["at_target_rate"] = at_target
            out["p99_at_10000_s"] = at_target["p99_s"]
            out["max_sustained_per_s"] = best
            out["max_achieved_per_s"] = max(s["achieved_per_s"] for s in steps)
            at_1000 = next((s for s in steps if s["offered_per_s"] == 1000
                            and s["sustained"]), None) or next(
                (s for s in steps if s["offered_per_s"] == 1000), None)
            out["p99_at_1000_s"] = at_1000["p99_s"] if at_1000 else None
            out["p50_at_1000_s"] = at_1000["p50_s"] if at_1000 else None
            out["limit"] = _limit(sat, os.cpu_count() or 1)
            print_table(f"client load, ramp on {target} (open loop, {POOL * WORKERS} pooled "
                        "connections)", ["offered/s", "done/s", "p50 ms", "p99 ms",
                                         "node CPU", "gen CPU", "machine CPU", "RSS MiB",
                                         "sustained"],
                        [[str(s["offered_per_s"]), f"{s['achieved_per_s']:.0f}",
                          ms(s["p50_s"]), ms(s["p99_s"]), f"{s['node_cpu']:.2f}",
                          f"{s['generator_cpu_proc']:.2f}", f"{s['machine_cpu']:.2f}",
                          f"{s['node_rss_mib']:.0f}",
                          "yes" if s["sustained"] else "no"] for s in steps])
            print(f"  highest sustained: {best:.0f} fetches/s from one node; "
                  f"limit: {out['limit']}")
            # New connections back to back, without and with TLS session resumption.
            gen.call("connect", n=0, prefix="none")
            out["churn"] = {}
            for resume in (False, True):
                meter = CpuMeter({**node_pids, **gen.pids})
                cpu0 = proc_cpu_seconds(pid)
                parts = gen.call("churn", start_at=time.time() + 0.2, duration=step_s,
                                 threads=CHURN_THREADS, resume=resume)
                node_cpu_s = proc_cpu_seconds(pid) - cpu0
                cpu = meter.read()
                ch = _merge(parts, step_s)
                ch.pop("_latencies")
                ch.update({"threads": CHURN_THREADS * WORKERS, "resumed":
                           sum(p["reused"] for p in parts), "node_cpu": cpu[target],
                           # CPU time is what load distorts least: per connection it says
                           # what a connection costs, whatever else ran on the machine.
                           "node_cpu_ms_per_connection": round(
                               node_cpu_s * 1000 / max(1, ch["completed"]), 3),
                           "load_average": round(os.getloadavg()[0], 2),
                           "machine_cpu": cpu["machine"],
                           "generator_cpu_proc": round(sum(v for k, v in cpu.items()
                                                           if k.startswith("generator")), 3)})
                out["churn"]["resumed" if resume else "full"] = ch
                print(f"  new connections ({'resuming' if resume else 'full'} handshakes, "
                      f"{CHURN_THREADS * WORKERS} threads, connect + one fetch + close): "
                      f"{ch['achieved_per_s']:.0f}/s, {ch['resumed']} resumed, p50 "
                      f"{ms(ch['p50_s'])} ms, {ch['errors']} errors, node CPU "
                      f"{ch['node_cpu']:.2f} ({ch['node_cpu_ms_per_connection']:.2f} ms per "
                      f"connection), generator {ch['generator_cpu_proc']:.2f}, "
                      f"machine {ch['machine_cpu']:.2f}, load {ch['load_average']}", flush=True)
            # Then every client its own connection (the node keeps their memory afterwards).
            gen.call("connect", n=0, prefix="none")  # the pool's connections closed first
            rss0 = proc_rss_mib(pid)
            fds0 = _open_fds(pid)
            t = time.perf_counter()
            conn = gen.call("connect", n=clients, prefix="client")
            connect_s = time.perf_counter() - t
            rss_conn = proc_rss_mib(pid)
            # Connections the node holds open now: on a loaded machine the connect phase
            # can outlast the node's idle_timeout, which closes the first ones meanwhile.
            held = _open_fds(pid) - fds0
            meter = CpuMeter({**node_pids, **gen.pids})
            start_at = time.time() + 0.3
            parts = gen.call("clients", start_at=start_at, duration=phase_s,
                             interval=interval, seed=1)
            cpu = meter.read()
            phase = _merge(parts, phase_s)
            phase.update({
                "connected": sum(c["connected"] for c in conn),
                "connect_errors": sum(c["errors"] for c in conn),
                "connect_s": connect_s, "handshakes_per_s": clients / connect_s,
                "offered_per_s": clients / interval,
                "node_cpu": cpu[target], "machine_cpu": cpu["machine"],
                "other_nodes_cpu": {k: v for k, v in cpu.items()
                                    if k != target and k.startswith("node")},
                "node_rss_mib_before": rss0, "node_rss_mib_connected": rss_conn,
                "node_connections_held": held,
                "node_rss_kib_per_connection": round((rss_conn - rss0) * 1024 / max(1, held), 2),
                "node_rss_mib_after": proc_rss_mib(pid)})
            clients_lat = phase.pop("_latencies")
            out["clients"] = phase
            print_table(
                f"client load, {clients:,} clients, each its own mTLS connection to "
                f"{target}, resync {interval:g} s +/-10%",
                ["connect", "offered/s", "done/s", "p50 ms", "p99 ms", "errors",
                 "node CPU", "RSS MiB before/connected"],
                [[f"{phase['connected']} in {connect_s:.1f} s", f"{clients / interval:.0f}",
                  f"{phase['achieved_per_s']:.0f}", ms(phase["p50_s"]), ms(phase["p99_s"]),
                  str(phase["errors"] + phase["connect_errors"]), f"{cpu[target]:.2f}",
                  f"{rss0:.0f} / {rss_conn:.0f} ({phase['node_rss_kib_per_connection']:.1f} "
                  f"KiB each of {held} held)"]])
            out["_plot"] = {"clients_latencies": clients_lat, "ramp_latencies": lat_by_rate,
                            "saturation_latencies": sat_lat}
        finally:
            gen.close()
            out["elections"] = elections.stop()
            print(f"  elections during the load scenario (spurious): "
                  f"{out['elections']['elections']}")
    return out


def _open_fds(pid: int) -> int:
    """How many descriptors a process has open (its connections among them)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _limit(step: dict[str, Any], cpus: int) -> str:
    node, gen = step["node_cpu"], step["generator_cpu_proc"]
    ours = node + gen + step["other_nodes_cpu"]
    total = max(step.get("machine_cpu", ours), ours)
    if node >= 0.85:
        return (f"the target node: its CPU was {node:.2f} of a core (one asyncio thread under "
                f"the GIL can use at most one); generator {gen:.2f}, machine {total:.2f} of "
                f"{cpus} cores")
    if total >= 0.85 * cpus:
        return (f"the machine: {total:.2f} of {cpus} cores busy (node {node:.2f}, generator "
                f"{gen:.2f}, other nodes {step['other_nodes_cpu']:.2f}, anything else "
                f"{max(0.0, total - ours):.2f}); the node cannot get a whole core")
    if gen >= 0.9 * WORKERS:
        return f"the generator: {gen:.2f} of {WORKERS} processes' cores"
    return (f"neither the node ({node:.2f} core) nor the machine ({total:.2f} of {cpus} "
            f"cores) is saturated: {step.get('connections', '?')} closed-loop connections at "
            f"p50 {step['p50_s'] * 1000:.1f} ms bound the rate")
