/* SPDX-License-Identifier: GPL-2.0-or-later
 * nfbind's C helper for NFLOG. */
#include "common_src.h"
#include <linux/netfilter/nfnetlink_log.h>
#include <libnetfilter_log/libnetfilter_log.h>
#include "packet_src.h"
