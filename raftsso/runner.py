"""Runs one node process: logging, umask, Raft, TLS service, clean shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from raftsso.config import load_node_config
from raftsso.node import Node
from raftsso.server import Server

log = logging.getLogger("raftsso")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pysyncobj is chatty at INFO and its messages are ours to translate.
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)


def run_node(config_path: str | Path) -> int:
    """Run a node until SIGTERM or SIGINT; returns the process exit code."""
    os.umask(0o077)  # every file this process creates is private, pysyncobj's included
    cfg = load_node_config(config_path)
    node = Node(cfg)
    node.start()
    try:
        return asyncio.run(_serve(node))
    finally:
        node.stop()
        log.info("node %s stopped", cfg.node_id)


async def _serve(node: Node) -> int:
    server = Server(node)
    await server.start()
    log.info("node %s serving on %s", node.cfg.node_id, node.cfg.service_address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return 0
