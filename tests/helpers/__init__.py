# SPDX-License-Identifier: GPL-2.0-or-later
"""What the tests share, by subject; conftest.py holds only pytest hooks and
fixtures and takes its helpers from here.

* :mod:`helpers.netns`     throw-away network namespaces (``NetNS``), veth pairs
* :mod:`helpers.packets`   raw frames with correct checksums, receiving from sockets
* :mod:`helpers.procs`     child processes (environment, package sources), descriptors
* :mod:`helpers.report`    fault-scenario figures and the bounded/full ``Soak`` sizes
* :mod:`helpers.nflog`     NFLOG rules, /proc rows and receive loops of the NfLog tests
* :mod:`helpers.conntrack` conntrack-using namespaces and the ``conntrack -L`` parser
* :mod:`helpers.cheaders`  constants read from the C header text, apart from nfbind
* :mod:`helpers.scrape`    Prometheus endpoints scraped over HTTP and parsed by prometheus_client

``fault_consumer.py`` and ``fault_memory_child.py`` are scripts the fault
tests run as child processes (the latter is imported too); they import
nothing from this package, so they run from any directory.
"""
