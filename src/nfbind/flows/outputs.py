# SPDX-License-Identifier: GPL-2.0-or-later
"""Where flow records go: :class:`JsonLines` (a file or stdout) and
:class:`SQLite` (a table ``flows``); the IPFIX exporter is
:class:`nfbind.flows.ipfix.IpfixExporter`.  All three are
:class:`FlowOutput` objects: ``write(records)`` takes one batch, ``tick()``
is called when nothing happens for a while, ``close()`` ends it.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import IO, Any, Dict, List, Optional, Sequence, Union

from .record import COLUMNS, FlowRecord

__all__ = ["FlowOutput", "JsonLines", "SQLite", "SQLITE_SCHEMA"]

PathLike = Union[str, "os.PathLike[str]"]


class FlowOutput:
    """The interface of a flow output (subclass it for your own).

    ``write`` gets each batch of records as it ends (one batch: what one read
    of the event socket brought, up to a few thousand records); it may raise
    OSError, which stops the :class:`~nfbind.flows.FlowRecorder`.
    """

    def write(self, records: Sequence[FlowRecord]) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Periodic work (``now``: ``time.monotonic()``), e.g. re-sending
        IPFIX templates; called at least every few seconds."""

    def close(self) -> None:
        """Flush and release what the output holds; safe to call twice."""

    def __enter__(self) -> "FlowOutput":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonLines(FlowOutput):
    """One JSON object per record (:meth:`FlowRecord.as_dict`), one per line.

    ``dest`` is a path (appended to, created if absent) or an open text
    file such as ``sys.stdout`` (not closed by :meth:`close`).  Each batch is
    flushed when written.

    Raises OSError when the file cannot be opened.
    """

    def __init__(self, dest: Union[PathLike, IO[str]]) -> None:
        self._own = isinstance(dest, (str, os.PathLike))
        if self._own:
            self._f: Optional[IO[str]] = open(dest, "a", encoding="utf-8")  # type: ignore[arg-type]
        else:
            if not hasattr(dest, "write"):
                raise TypeError("dest must be a path or a text file, not %s"
                                % type(dest).__name__)
            self._f = dest  # type: ignore[assignment]
        self.name = str(dest) if self._own else getattr(dest, "name", "<file>")
        self.records = 0

    def write(self, records: Sequence[FlowRecord]) -> None:
        f = self._f
        if f is None:
            raise ValueError("JsonLines(%s) is closed" % self.name)
        dumps = json.dumps
        f.write("".join(dumps(r.as_dict(), separators=(",", ":")) + "\n" for r in records))
        f.flush()
        self.records += len(records)

    def close(self) -> None:
        f, self._f = self._f, None
        if f is not None and self._own:
            f.close()

    def __repr__(self) -> str:
        return "JsonLines(%r)" % self.name


#: the table :class:`SQLite` creates; times are seconds since the epoch
SQLITE_SCHEMA = """\
CREATE TABLE IF NOT EXISTS flows (
    ct_id INTEGER,          -- the kernel's conntrack id
    family TEXT,            -- 'ipv4' or 'ipv6'
    proto TEXT,             -- 'tcp', 'udp', 'icmp' ... (a number without a name)
    orig_src TEXT, orig_dst TEXT, orig_sport INTEGER, orig_dport INTEGER,
    reply_src TEXT, reply_dst TEXT, reply_sport INTEGER, reply_dport INTEGER,
    icmp_type INTEGER, icmp_code INTEGER, icmp_id INTEGER,
    zone INTEGER, mark INTEGER,
    start REAL, "end" REAL, duration REAL,
    orig_packets INTEGER, orig_bytes INTEGER, reply_packets INTEGER, reply_bytes INTEGER
)"""


class SQLite(FlowOutput):
    """Records as rows of the table ``flows`` in the SQLite database ``path``
    (:data:`SQLITE_SCHEMA`; created with the file if absent), one
    transaction per batch.  The database is put in WAL mode so that other
    processes can read it while records arrive.  ``end`` is an SQL keyword:
    quote it in queries (``SELECT "end" FROM flows``).

    Raises sqlite3.Error when the file is not a database, ValueError when
    its ``flows`` table lacks some of the columns.
    """

    def __init__(self, path: PathLike, *, table: str = "flows") -> None:
        if not table.isidentifier():
            raise ValueError("table must be an SQL identifier (letters, digits, _), got %r"
                             % (table,))
        self.path = os.fspath(path)
        self.table = table
        self.records = 0
        # the recorder may be made in one thread and run in another; it never
        # uses the connection from two threads at once
        self._db: Optional[sqlite3.Connection] = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False)
        try:
            db = self._db
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(SQLITE_SCHEMA.replace("EXISTS flows", "EXISTS " + table, 1))
            have = {row[1] for row in db.execute("PRAGMA table_info(%s)" % table)}
            missing = [c for c in COLUMNS if c not in have]
            if missing:
                raise ValueError(
                    "table %s in %s has no column%s %s: it was made by something else; "
                    "use another file or another table name"
                    % (table, self.path, "" if len(missing) == 1 else "s", ", ".join(missing)))
        except BaseException:
            self.close()
            raise
        cols = ", ".join('"%s"' % c for c in COLUMNS)
        self._insert = "INSERT INTO %s (%s) VALUES (%s)" % (
            table, cols, ", ".join("?" * len(COLUMNS)))

    def write(self, records: Sequence[FlowRecord]) -> None:
        db = self._db
        if db is None:
            raise ValueError("SQLite(%s) is closed" % self.path)
        if not records:
            return
        db.execute("BEGIN")
        try:
            db.executemany(self._insert, [r.as_row() for r in records])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.records += len(records)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __repr__(self) -> str:
        return "SQLite(%r)" % self.path


def rows_as_dicts(db: sqlite3.Connection, table: str = "flows") -> List[Dict[str, Any]]:
    """Every row of ``table`` as a dict of its columns (for scripts and tests)."""
    cur = db.execute("SELECT * FROM %s ORDER BY rowid" % table)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur]
