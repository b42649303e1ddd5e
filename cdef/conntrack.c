/* SPDX-License-Identifier: GPL-2.0-or-later
 * nfbind's C helper for conntrack. */
#include "common_src.h"
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
