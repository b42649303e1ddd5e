# SPDX-License-Identifier: GPL-2.0-or-later
"""Types of the optional speedup nfbind._fastct (cext/fastct.c): conntrack
flows built in C from the core parser's records."""
from typing import Any, Callable, List, Tuple, Union

def configure(tuple_cls: type, flow_cls: type, ips: Any, statuses: Any, tcpinfos: Any,
              protos: Tuple[Any, ...], tcp_states: Tuple[Any, ...],
              sctp_states: Tuple[Any, ...], fam4: Any, fam6: Any, no_labels: Any,
              rare: Callable[..., Tuple[Any, ...]], nat_of: Callable[[int, Any], Any],
              nat_bits: int, af_inet6: int) -> None: ...
def build_flows(recs: Union[bytes, memoryview], n: int, data: bytes, out: List[Any]) -> None: ...
def layout() -> Tuple[int, int, Tuple[Tuple[str, int], ...]]: ...
