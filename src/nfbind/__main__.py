# SPDX-License-Identifier: GPL-2.0-or-later
"""``python -m nfbind``: the same as the ``nfbind`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
