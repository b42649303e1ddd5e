# SPDX-License-Identifier: GPL-2.0-or-later
"""Connection labels: 128 bits per connection, named in connlabel.conf.

Label bits as Python sets (checked), as the 16 bytes the kernel and
libnetfilter_conntrack exchange, and :class:`LabelMap` for names.  The bit
helpers need only the standard library; LabelMap reads connlabel.conf with
libnetfilter_conntrack and so needs the conntrack channel.
"""
from __future__ import annotations

import errno
import os
import struct
from typing import Any, Callable, FrozenSet, Iterable, Optional, Set, Union

from .._channels import missing
from .._netlink import check_int

try:
    from .._conntrack import ffi as _ffi, lib as _lib
except ImportError:  # the conntrack channel was not built: LabelMap() says so
    # (typed as the module's: only LabelMap() reads them, after checking for None)
    _ffi = _lib = None  # type: ignore[assignment]

__all__ = ["LabelMap", "MAX_LABEL", "LABEL_HINT", "label_bits", "labels_bytes",
           "labels_from_bytes"]

#: the highest label bit the kernel keeps (128 bits of labels per connection)
MAX_LABEL = 127

LABEL_HINT = (
    "the kernel keeps labels only once a rule uses them: add one, e.g. "
    "`iptables -A OUTPUT -m connlabel --label %d --set` (or nft `ct label set %d`) "
    "in this network namespace, then retry; flows that existed before the rule "
    "have no room for labels"
)

_WORDS = struct.Struct("=4I")


def label_bits(name: str, values: Any,
               labelmap: Optional[Callable[[], "LabelMap"]] = None) -> FrozenSet[int]:
    """Validate labels: bit numbers 0..127, or names (resolved by
    ``labelmap()``, which is called only when a name is given).

    Raises TypeError (not a collection of bits, or a name without a
    ``labelmap``), ValueError (a bit outside 0..127), KeyError (an unknown
    name); each message names ``name``.
    """
    if isinstance(values, (int, str)) and not isinstance(values, bool):
        values = (values,)
    try:
        if isinstance(values, (bytes, bytearray, memoryview)):
            raise TypeError  # not a collection of bits
        items = list(values)
    except TypeError:
        raise TypeError(
            "%s must be a set of label bits (0..%d) or names, not %s"
            % (name, MAX_LABEL, type(values).__name__)
        ) from None
    bits = set()
    for v in items:
        if isinstance(v, str):
            if labelmap is None:
                raise TypeError(
                    "%s: label names (%r) are resolved by Conntrack methods; a Flow holds "
                    "bit numbers" % (name, v)
                )
            bits.add(labelmap().bit(v))
        else:
            bits.add(check_int("%s bit" % name, v, 0, MAX_LABEL))
    return frozenset(bits)


def labels_bytes(bits: Iterable[int]) -> bytes:
    """128 label bits as libnetfilter_conntrack lays them out: 4 native uint32 words."""
    words = [0, 0, 0, 0]
    for b in bits:
        words[b >> 5] |= 1 << (b & 31)
    return _WORDS.pack(*words)


def labels_from_bytes(raw: bytes) -> FrozenSet[int]:
    """The bits set in up to 16 bytes of labels (shorter input is zero-padded)."""
    bits = []
    for w, word in enumerate(_WORDS.unpack(raw[:16].ljust(16, b"\0"))):
        while word:
            low = word & -word
            bits.append(w * 32 + low.bit_length() - 1)
            word ^= low
    return frozenset(bits)


class LabelMap:
    """Label names <-> bits, from connlabel.conf (``nfct_labelmap_*``).

    ``path`` defaults to libnetfilter_conntrack's (``/etc/xtables/connlabel.conf``).
    The file has one ``BIT NAME`` per line, e.g. ``3 suspicious``.

    Raises FileNotFoundError (with what to write) when the file is missing,
    ValueError when libnetfilter_conntrack cannot read it, ImportError (naming
    the package to install) when nfbind was built without the conntrack
    channel.
    """

    def __init__(self, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> None:
        if _lib is None:
            raise missing("conntrack", "nfbind.LabelMap")
        if path is None:
            p = _lib.nfct_labels_get_path()
            path = _ffi.string(p).decode() if p != _ffi.NULL else "/etc/xtables/connlabel.conf"
        self.path = os.fsdecode(os.fspath(path))
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                errno.ENOENT,
                "no connlabel.conf at %s: label names need it. Create it with one "
                "'BIT NAME' per line (e.g. `echo '3 suspicious' >> %s`), pass "
                "labelmap='/path/to/connlabel.conf', or use label bit numbers (0..%d)"
                % (self.path, self.path, MAX_LABEL),
                self.path,
            )
        m = _lib.nfct_labelmap_new(os.fsencode(self.path))
        if m == _ffi.NULL:
            raise ValueError(
                "libnetfilter_conntrack could not read %s (%s): each line must be "
                "'BIT NAME' with BIT in 0..%d"
                % (self.path, os.strerror(_ffi.errno or errno.EINVAL), MAX_LABEL)
            )
        self._m = _ffi.gc(m, _lib.nfct_labelmap_destroy)

    def bit(self, name: str) -> int:
        """The bit of label ``name``.  Raises KeyError naming the file."""
        if not isinstance(name, str):
            raise TypeError("a label name must be a str, not %s" % type(name).__name__)
        try:
            raw: Optional[bytes] = name.encode()
        except UnicodeEncodeError:  # a lone surrogate: no such name in any file
            raw = None
        b = _lib.nfct_labelmap_get_bit(self._m, raw) if raw is not None else -1
        if b < 0:
            raise KeyError("no label named %r in %s" % (name, self.path))
        return int(b)

    def name(self, bit: int) -> Optional[str]:
        """The name of label ``bit``, or None when connlabel.conf names none."""
        bit = check_int("bit", bit, 0, MAX_LABEL)
        p = _lib.nfct_labelmap_get_name(self._m, bit)
        if p == _ffi.NULL:
            return None
        s: str = _ffi.string(p).decode("utf-8", "replace")
        return s or None

    def names(self, bits: Iterable[int]) -> Set[str]:
        """Names of the given bits (unnamed bits are left out)."""
        out = set()
        for b in bits:
            n = self.name(b)
            if n is not None:
                out.add(n)
        return out

    def __repr__(self) -> str:
        return "<nfbind.LabelMap %s>" % self.path
