# SPDX-License-Identifier: GPL-2.0-or-later
"""Drop-in shims for users of other netfilter libraries.

* :mod:`nfbind.compat.netfilterqueue`: the API of NetfilterQueue 1.1
  (``from nfbind.compat.netfilterqueue import NetfilterQueue``).
"""
