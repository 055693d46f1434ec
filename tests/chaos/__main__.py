"""Long chaos runs on demand: ``python -m tests.chaos --seed N --duration SECONDS``.

Exit 0 when the checker finds nothing, 1 on violations (the seed, the violations and the
history file are printed), 2 on a harness error. SIGTERM/SIGINT end the run early: the
nodes are stopped and the namespaces removed either way.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from raftsso.config import RaftTimings
from tests.chaos.runner import run
from tests.harness import NodeOptions


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the fault schedule (default: random, printed)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of faults")
    parser.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    parser.add_argument("--admins", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3, help="SSO clients")
    parser.add_argument("--net", choices=("auto", "netns", "sigstop"), default="auto",
                        help="how to cut nodes off (auto: namespaces if root, else SIGSTOP)")
    parser.add_argument("--compaction", type=int, default=None,
                        help="raft log_compaction_min_entries for the nodes (default: the "
                             "product default)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to keep the deployment, history and report "
                             "(default: a new directory under /tmp)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"raftsso-chaos-{seed}-"))
    signal.signal(signal.SIGTERM, _interrupt)
    options = (NodeOptions(raft=RaftTimings(log_compaction_min_entries=args.compaction))
               if args.compaction is not None else None)
    t0 = time.monotonic()
    try:
        result = run(seed, args.duration, workdir, nodes=args.nodes, admins=args.admins,
                     sso_clients=args.clients, net_mode=args.net, options=options,
                     out=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"chaos: interrupted after {time.monotonic() - t0:.0f} s (seed {seed}, "
              f"workdir {workdir})", flush=True)
        return 2
    except Exception as exc:
        print(f"chaos: harness error (seed {seed}, workdir {workdir}): {exc!r}", flush=True)
        raise
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
