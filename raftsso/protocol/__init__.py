"""The typed protocol of raftsso: error codes, ids, service messages, replicated commands.

=====================================  ===================================================
module                                 what
=====================================  ===================================================
:mod:`raftsso.protocol.codes`          :class:`ErrorCode`: every code a node answers with
:mod:`raftsso.protocol.ids`            validated ids: version, request, node, client
:mod:`raftsso.protocol.fields`         typed reading of a decoded msgpack map
:mod:`raftsso.protocol.record`         ``@record``: a frozen dataclass cheap to define
:mod:`raftsso.protocol.base`           the ops, the request/result bases, the error body
:mod:`raftsso.protocol.node_status`    the ``ping`` and ``status`` types (a status loads these)
:mod:`raftsso.protocol.messages`       one request and one result type per service op
:mod:`raftsso.protocol.commands`       the state machine's commands and their outcome
=====================================  ===================================================

Every message is a frozen dataclass (a :func:`~raftsso.protocol.record.record`) with
``from_wire`` (validates, raises :class:`~raftsso.errors.BadRequest` or
:class:`~raftsso.errors.DecodeError`) and ``to_wire``; msgpack (:mod:`raftsso.wire`) stays
the codec and every blob keeps its format version, so frames, journals and snapshots
written before these types still decode.

Only the two leaf modules are imported here (:mod:`raftsso.errors` needs the codes);
import messages and commands from their modules.
"""

from raftsso.protocol.codes import ErrorCode
from raftsso.protocol.ids import (
    ClientId,
    NodeId,
    RequestId,
    VersionId,
    client_id,
    is_version_id,
    new_request_id,
    node_id,
    request_id,
    version_id,
)

__all__ = ["ClientId", "ErrorCode", "NodeId", "RequestId", "VersionId", "client_id",
           "is_version_id", "new_request_id", "node_id", "request_id", "version_id"]
