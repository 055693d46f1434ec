"""The one cluster harness of the integration, chaos and benchmark code.

::

    from tests.harness import Cluster, NodeOptions, wait_for

    options = NodeOptions(raft=RaftTimings(log_compaction_min_entries=8))
    with running_cluster(tmp_path / "deploy", 3, options=options) as c:  # started, healthy
        leader = c.leader()
        c.kill(leader)                       # SIGKILL + reap
        c.rotate(now=True)                   # through whichever node leads now
        c.cut("node2"); c.heal()             # namespaces if the net has them, else SIGSTOP

* :mod:`tests.harness.cluster`: :class:`Cluster`, real node processes and their faults;
* :mod:`tests.harness.options`: :class:`NodeOptions`, typed node.toml settings written
  through the TOML writer;
* :mod:`tests.harness.net`: where nodes live (127.0.0.1, or a network namespace each) and
  how one is cut off;
* :mod:`tests.harness.ports`: port blocks below the ephemeral range, checked free and
  locked across processes;
* :mod:`tests.harness.wait`: :func:`wait_for` (poll with a deadline) and :func:`cli`.

No in-process variant (pysyncobj ticking without sockets) yet: ``Node`` builds its own Raft
member over TCP/TLS links, so one needs the Raft member passed in and an in-memory
transport first (issue 10, items 2 and 3).
"""

from tests.harness.cluster import Cluster, cluster_client, running_cluster
from tests.harness.net import LoopbackNet, NamespaceNet, Net, make_net, namespaces_available
from tests.harness.options import NodeOptions, configure_node
from tests.harness.ports import free_base_port, reserve_ports
from tests.harness.wait import DEFAULT_TIMEOUT, cli, sent_until_dropped, wait_for

# The former name, for branches written before the harness was merged.
LocalCluster = Cluster

__all__ = [
    "DEFAULT_TIMEOUT",
    "Cluster",
    "LocalCluster",
    "LoopbackNet",
    "NamespaceNet",
    "Net",
    "NodeOptions",
    "cli",
    "cluster_client",
    "configure_node",
    "free_base_port",
    "make_net",
    "namespaces_available",
    "reserve_ports",
    "running_cluster",
    "sent_until_dropped",
    "wait_for",
]
