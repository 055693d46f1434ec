"""raftsso: a Raft-replicated master secret store.

The highly available successor of the ENTSSO Master Secret Server.
"""

__version__ = "0.1.0"
