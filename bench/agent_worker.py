"""One closed-loop client of the agent benchmark (stdlib only, so it starts fast).

``python -m bench.agent_worker SOCKET SECONDS``, then on stdin: the request's length on
one line and the request; the worker connects and prints ``ready``, waits for a ``go``
line, then sends the request again each time the previous answer is complete, for
SECONDS, and prints one JSON line ``{"latencies": [...], "errors": N}``.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def main() -> None:
    path, seconds = sys.argv[1], float(sys.argv[2])
    stdin = sys.stdin.buffer
    length = int(stdin.readline())
    request = stdin.read(length)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    print("ready", flush=True)
    stdin.readline()  # "go"
    latencies: list[float] = []
    errors = 0
    buf = b""
    clock = time.perf_counter
    end = clock() + seconds
    while True:
        t0 = clock()
        if t0 >= end:
            break
        sock.sendall(request)
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                head = buf[:i]
                j = head.lower().find(b"content-length:")
                k = head.find(b"\r\n", j)
                size = int(head[j + 15:k if k > 0 else len(head)])
                if len(buf) >= i + 4 + size:
                    if not head.startswith(b"HTTP/1.1 200 "):
                        errors += 1
                    buf = buf[i + 4 + size:]
                    break
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            buf += chunk
        latencies.append(clock() - t0)
    sock.close()
    print(json.dumps({"latencies": latencies, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
