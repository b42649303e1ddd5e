# SPDX-License-Identifier: GPL-2.0-or-later
"""What goes to the kernel: the request specs of the C helper (``struct
nfb_ct_spec``, ``nfb_exp_spec``, ``nfb_ct_dumpf``) filled from checked
Python values, and the checks a tuple must pass before the kernel can look
it up.

Only the attributes a request needs are set: an update carries the tuple,
the zone and what changes, never attributes read back from the kernel
(``conntrack -U`` resends what it read, which the kernel refuses for some
flows, e.g. with EOPNOTSUPP).
"""
from __future__ import annotations

import typing as _t
from typing import Any, FrozenSet, Optional, Union

from .._channels import missing

try:
    from .._conntrack import ffi, lib
except ImportError as e:  # the conntrack channel was not built on this machine
    raise missing("conntrack", "nfbind.conntrack._wire") from e
from .._core import lib as core
from .labels import labels_bytes
from .model import (
    AF_INET,
    AF_INET6,
    ICMP_PROTOS,
    PORT_PROTOS,
    Expectation,
    Flow,
    Tuple,
    check_addr,
    check_opt,
    check_u16,
    check_u32,
)

__all__ = ["TABLES", "TupleOrFlow", "status_filter", "dump_filter", "complete", "as_tuple",
           "zone_of", "flow_spec", "create_spec", "update_spec", "expect_spec",
           "expect_delete_spec"]

TupleOrFlow = Union[Tuple, Flow]

#: dump(table=) -> the message that dumps it
TABLES = {
    "conntrack": core.IPCTNL_MSG_CT_GET,
    "dying": core.IPCTNL_MSG_CT_GET_DYING,
    "unconfirmed": core.IPCTNL_MSG_CT_GET_UNCONFIRMED,
}


# -- filters -------------------------------------------------------------------------------


def status_filter(status: Any, status_mask: Any) -> _t.Tuple[Optional[int], Optional[int]]:
    """The checked status and status mask of a dump or flush filter; the mask
    defaults to the status itself."""
    st = check_opt(check_u32, "status", status)
    smask = check_opt(check_u32, "status_mask", status_mask)
    if smask is not None and st is None:
        raise ValueError("status_mask needs status=")
    if st is not None and smask is None:
        smask = st
    return st, smask


def dump_filter(fam: Optional[int], mark: Optional[int], mmask: int, status: Optional[int],
                smask: Optional[int]) -> Any:
    """The kernel-side filter of a dump or flush: family, mark under its mask,
    status under its mask."""
    f = ffi.new("struct nfb_ct_dumpf *")
    f.family = fam or 0
    if mark is not None:
        f.set |= lib.NFB_DF_MARK
        f.mark = mark & mmask
        f.mark_mask = mmask
    if status is not None:
        f.set |= lib.NFB_DF_STATUS
        f.status = status & (smask or 0)
        f.status_mask = smask or 0
    return f


# -- tuples --------------------------------------------------------------------------------


def complete(tup: Tuple, what: str) -> None:
    """A tuple the kernel can look up: ports for port protocols, type and id for ICMP.

    Raises ValueError naming ``what``."""
    name = getattr(tup.proto, "name", str(tup.proto)).lower()
    if tup.proto in PORT_PROTOS and (tup.sport is None or tup.dport is None):
        raise ValueError("%s: a %s tuple needs sport and dport" % (what, name))
    if tup.proto in ICMP_PROTOS and (tup.icmp_type is None or tup.icmp_id is None):
        raise ValueError("%s: an %s tuple needs icmp_type and icmp_id (icmp_code defaults to 0)"
                         % (what, name))


def as_tuple(obj: Any, what: str) -> Tuple:
    """The original tuple of a Flow, or a Tuple itself.  Raises TypeError naming ``what``."""
    if isinstance(obj, Flow):
        return obj.orig
    if isinstance(obj, Tuple):
        return obj
    raise TypeError("%s needs a Flow or a Tuple, not %s" % (what, type(obj).__name__))


def zone_of(obj: TupleOrFlow, zone: Optional[int]) -> int:
    """``zone`` checked, else the Flow's zone (0 for a Tuple)."""
    if zone is not None:
        return check_u16("zone", zone)
    return obj.zone if isinstance(obj, Flow) else 0


def _fill_tuple(t: Any, tup: Tuple) -> None:
    raw = tup.src.packed
    ffi.memmove(t.src, raw, len(raw))
    raw = tup.dst.packed
    ffi.memmove(t.dst, raw, len(raw))
    t.proto = int(tup.proto)
    if tup.sport is not None:
        t.sport = tup.sport
    if tup.dport is not None:
        t.dport = tup.dport
    if tup.icmp_type is not None:
        t.icmp_type = tup.icmp_type
    t.icmp_code = tup.icmp_code or 0
    if tup.icmp_id is not None:
        t.icmp_id = tup.icmp_id
    if tup.zone is not None:
        # CTA_TUPLE_ZONE: a directional zone (CT --zone-orig/--zone-reply)
        t.has |= core.NFB_T_ZONE
        t.zone = tup.zone


def _family_of(tup: Tuple) -> int:
    return AF_INET if tup.src.version == 4 else AF_INET6


# -- flows ---------------------------------------------------------------------------------


def flow_spec(tup: Tuple, zone: Optional[int]) -> Any:
    """A spec naming one flow: its original tuple and (when not 0) its zone."""
    s = ffi.new("struct nfb_ct_spec *")
    s.family = _family_of(tup)
    s.set = lib.NFB_S_ORIG
    _fill_tuple(s.orig, tup)
    if zone:
        s.set |= lib.NFB_S_ZONE
        s.zone = zone
    return s


def create_spec(flow: Flow) -> Any:
    """Everything :meth:`Conntrack.create` sends for ``flow``.

    Raises ValueError/TypeError for an incomplete tuple, a missing timeout or
    a NAT address of the other IP version."""
    complete(flow.orig, "create()")
    if flow.reply is not None:
        complete(flow.reply, "create() reply")
    if flow.timeout is None:
        raise ValueError("create() needs Flow(timeout=SECONDS): the kernel refuses a flow without one")
    s = flow_spec(flow.orig, flow.zone)
    if flow.reply is not None:
        s.set |= lib.NFB_S_REPLY
        _fill_tuple(s.reply, flow.reply)
    else:
        s.set |= lib.NFB_S_SETUP_REPLY
    s.set |= lib.NFB_S_TIMEOUT
    s.timeout = flow.timeout
    if flow.status:
        s.set |= lib.NFB_S_STATUS
        s.status = int(flow.status)
    if flow.mark:
        s.set |= lib.NFB_S_MARK
        s.mark = flow.mark
    if flow.labels:
        s.set |= lib.NFB_S_LABELS
        ffi.memmove(s.labels, labels_bytes(flow.labels), 16)
    if flow.state is not None:
        s.set |= lib.NFB_S_STATE
        s.state = int(flow.state)
    if flow.helper is not None:
        s.set |= lib.NFB_S_HELPER
        raw = flow.helper.encode()
        ffi.memmove(s.helper, raw, len(raw))
    if flow.nat is not None:
        for ep, abit, pbit, afield, pfield in (
            (flow.nat.snat, lib.NFB_S_SNAT, lib.NFB_S_SNAT_PORT, "snat_addr", "snat_port"),
            (flow.nat.dnat, lib.NFB_S_DNAT, lib.NFB_S_DNAT_PORT, "dnat_addr", "dnat_port"),
        ):
            if ep is None:
                continue
            a = check_addr("nat address", ep[0])
            if a.version != flow.orig.src.version:
                raise ValueError("nat address %s is not of the flow's IP version" % a)
            s.set |= abit
            ffi.memmove(getattr(s, afield), a.packed, len(a.packed))
            if ep[1] is not None:
                s.set |= pbit
                setattr(s, pfield, check_u16("nat port", ep[1]))
    return s


def update_spec(tup: Tuple, zone: int, mark: Optional[int], timeout: Optional[int],
                status: Optional[int], labels: Optional[FrozenSet[int]],
                labels_mask: Optional[FrozenSet[int]]) -> Any:
    """An update of the flow ``tup`` in ``zone``: only the values given
    (checked already); ``labels`` under ``labels_mask``."""
    s = flow_spec(tup, zone)
    if mark is not None:
        s.set |= lib.NFB_S_MARK
        s.mark = mark
    if timeout is not None:
        s.set |= lib.NFB_S_TIMEOUT
        s.timeout = timeout
    if status is not None:
        s.set |= lib.NFB_S_STATUS
        s.status = status
    if labels_mask is not None:
        s.set |= lib.NFB_S_LABELS | lib.NFB_S_LABELS_MASK
        ffi.memmove(s.labels, labels_bytes(labels or ()), 16)
        ffi.memmove(s.labels_mask, labels_bytes(labels_mask), 16)
    return s


# -- expectations ----------------------------------------------------------------------------


def expect_spec(exp: Expectation) -> Any:
    """Everything :meth:`Conntrack.create_expect` sends for ``exp``."""
    s = ffi.new("struct nfb_exp_spec *")
    s.family = _family_of(exp.expected)
    s.set = lib.NFB_ES_MASTER | lib.NFB_ES_EXPECTED | lib.NFB_ES_MASK
    _fill_tuple(s.master, exp.master)
    _fill_tuple(s.expected, exp.expected)
    _fill_tuple(s.mask, exp.mask)
    if exp.timeout is not None:
        s.set |= lib.NFB_ES_TIMEOUT
        s.timeout = exp.timeout
    if exp.zone:
        s.set |= lib.NFB_ES_ZONE
        s.zone = exp.zone
    if exp.flags:
        s.set |= lib.NFB_ES_FLAGS
        s.flags = int(exp.flags)
    if exp.klass is not None:
        s.set |= lib.NFB_ES_CLASS
        s.klass = exp.klass
    if exp.helper is not None:
        s.set |= lib.NFB_ES_HELPER
        raw = exp.helper.encode()
        ffi.memmove(s.helper, raw, len(raw))
    return s


def expect_delete_spec(tup: Tuple, zone: int) -> Any:
    """The expectation for the expected tuple ``tup`` in ``zone``."""
    s = ffi.new("struct nfb_exp_spec *")
    s.family = _family_of(tup)
    s.set = lib.NFB_ES_EXPECTED
    _fill_tuple(s.expected, tup)
    if zone:
        s.set |= lib.NFB_ES_ZONE
        s.zone = zone
    return s
