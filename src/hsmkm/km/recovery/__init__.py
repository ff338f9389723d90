"""Token-gated recovery: a request naming records, K officer approvals made on the officers'
own tokens, each opening only the shares of those records; completion rebuilds exactly those
records' keys (custody rule 4).

The same request/approve machinery gates changes of the officers and of the quorum (shares
redistributed on the officers' side) and the migration of a first-release archive.
Completion is one-use: a conditional transition open -> completing -> completed, so however
many completions of one request run at once, one completes.

Modules: ``requests`` (opening, loading, the request's key), ``approvals`` (an officer's
approval; K of them checked at completion), ``claims`` (the one-use transition),
``completion`` (a recovery's keys rebuilt), ``held`` (keys held for re-enrollment),
``officers`` (officer and quorum changes). This package exports their public names.
"""

from hsmkm.km.recovery.approvals import (
    Approval,
    approve,
    approvers,
    officer_set_chain,
    verified_approvals,
)
from hsmkm.km.recovery.claims import claim, release
from hsmkm.km.recovery.completion import Completion, complete_recovery, record_serials
from hsmkm.km.recovery.held import RecoveredKey, release_recovered
from hsmkm.km.recovery.officers import complete_change
from hsmkm.km.recovery.requests import (
    CHANGE_KINDS,
    REQUEST_KEY_PREFIX,
    Request,
    RequestKind,
    RequestStatus,
    content_for_officer,
    get,
    list_requests,
    load,
    open_request,
    retire_stale,
)

__all__ = [
    "CHANGE_KINDS",
    "REQUEST_KEY_PREFIX",
    "Approval",
    "Completion",
    "RecoveredKey",
    "Request",
    "RequestKind",
    "RequestStatus",
    "approve",
    "approvers",
    "claim",
    "complete_change",
    "complete_recovery",
    "content_for_officer",
    "get",
    "list_requests",
    "load",
    "officer_set_chain",
    "open_request",
    "record_serials",
    "release",
    "release_recovered",
    "retire_stale",
    "verified_approvals",
]
