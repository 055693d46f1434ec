"""Who may do what with an affiliate application: ENTSSO's model, on Unix groups.

Pure decisions over a :class:`~raftsso.agent.peer.Caller` (the kernel's word) and an
application definition; group names are resolved to gids by an injected function.

=============  =====================================================================
action         allowed to
=============  =====================================================================
``use``        encrypt / decrypt with the application's binding: its users
``read``       read its configuration values and credential mappings: its users; in an
               *individual* application a user reads only the mapping under their own
               user name, unless an administrator
``write``      set or delete mappings and values: its administrators
``administer`` create, change, enable, disable, delete, import, export definitions:
               agent administrators only
=============  =====================================================================

* *Users* of an application are the members of its ``users_group`` and its
  administrators. *Administrators* are the members of its ``admins_group`` and the agent
  administrators. *Agent administrators* are root (uid 0) and the members of agent.toml's
  ``admin_group`` (ENTSSO's SSO Administrators: they may do everything).
* Membership means the group's gid is the caller's primary gid or one of the
  supplementary groups the kernel reported for the connection.
* A group name that does not resolve matches nobody; an application without groups is
  usable by agent administrators only.
* A **disabled** application refuses ``use``, ``read`` and ``write`` to everybody,
  agent administrators included; only ``administer`` (to enable or delete it) goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from raftsso.agent.errors import ApiError, forbidden
from raftsso.agent.peer import Caller
from raftsso.store import App, AppType


class Action(StrEnum):
    USE = "use"
    READ = "read"
    WRITE = "write"
    ADMINISTER = "administer"


class Policy:
    def __init__(self, gid_of: Callable[[str], int | None],
                 admin_group: str | None = None) -> None:
        self._gid_of = gid_of
        self.admin_group = admin_group

    def _member(self, caller: Caller, group: str | None) -> bool:
        if group is None:
            return False
        gid = self._gid_of(group)
        return gid is not None and gid in caller.gids

    def is_agent_admin(self, caller: Caller) -> bool:
        return caller.uid == 0 or self._member(caller, self.admin_group)

    def is_admin(self, caller: Caller, app: App) -> bool:
        return self.is_agent_admin(caller) or self._member(caller, app.admins_group)

    def is_user(self, caller: Caller, app: App) -> bool:
        return self.is_admin(caller, app) or self._member(caller, app.users_group)

    def may_see(self, caller: Caller, app: App) -> bool:
        """Whether an application appears in the caller's listing."""
        return self.is_agent_admin(caller) or (app.enabled and self.is_user(caller, app))

    def check(self, caller: Caller, action: Action, app: App | None, *,
              user: str | None = None) -> None:
        """Raise :class:`ApiError` (FORBIDDEN or APP_DISABLED) unless allowed.

        ``user``: the credential mapping read or written (``read`` of one mapping).
        """
        who = _who(caller)
        if action is Action.ADMINISTER or app is None:
            if not self.is_agent_admin(caller):
                group = f" or members of {self.admin_group}" if self.admin_group else ""
                raise forbidden(f"{who} may not administer applications (root{group} may)")
            return
        if not app.enabled:
            raise ApiError("APP_DISABLED", f"the application {app.name!r} is disabled: it "
                           "refuses every request until an agent administrator enables it")
        if action is Action.WRITE:
            if not self.is_admin(caller, app):
                raise forbidden(f"{who} is not an administrator of {app.name!r} "
                                f"({_group_text(app.admins_group)})")
            return
        if not self.is_user(caller, app):
            raise forbidden(f"{who} is not a user of {app.name!r} "
                            f"({_group_text(app.users_group)})")
        if (action is Action.READ and user is not None and app.type is AppType.INDIVIDUAL
                and user != caller.user and not self.is_admin(caller, app)):
            raise forbidden(f"{who} may read only their own credential mapping in "
                            f"{app.name!r}, not {user!r}")


def _who(caller: Caller) -> str:
    name = f" ({caller.user})" if caller.user else ""
    return f"uid {caller.uid}{name}"


def _group_text(group: str | None) -> str:
    return f"group {group}" if group else "no group is set"
