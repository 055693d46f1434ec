"""The raftsso agent: ENTSSO's SSO service, one per application host.

::

    raftsso/agent/
      config.py    agent.toml (socket, groups, store, limits)
      peer.py      who is calling: SO_PEERCRED + SO_PEERGROUPS (the kernel's word)
      policy.py    who may do what with an application (users, administrators, disabled)
      http.py      HTTP/1.1 on the Unix socket: httptools (llhttp) on asyncio, with limits
      api.py       the /v1 routes, JSON checks, operations, one error translation
      errors.py    ApiError and the stable error codes
      openapi.py   the OpenAPI document (served, and kept in docs/agent-openapi.json)
      audit.py     every refusal and every write, one JSON line each
      service.py   wiring and the process (raftsso agent run)
      client.py    AgentClient: the same operations from Python (the CLI's sso group)
      local.py     start/stop an agent beside a local deployment (raftsso local up --agent)

The agent holds the keyring in memory through :class:`raftsso.client.SSOClient` (same
cache, resync, staleness and failover), so applications in any language encrypt and
decrypt without holding a master secret, and keep decrypting while every node is down.
"""

from raftsso.agent.client import AgentClient
from raftsso.agent.config import AgentConfig, load_agent_config

__all__ = ["AgentClient", "AgentConfig", "load_agent_config"]
