/* SPDX-License-Identifier: GPL-2.0-or-later
 * System headers behind cdef/common.h; included by every module's source. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <poll.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/capability.h>
#include <linux/if_ether.h>
#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter_arp.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_conntrack_tcp.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <libmnl/libmnl.h>

/* mnl_nlmsg_ok() of libmnl 1.0.4 compares (int)nlmsg_len with the bytes
 * left, so a message claiming 2 GiB or more passes it (a negative int) and
 * mnl_nlmsg_next() then jumps out of the buffer.  This one compares unsigned. */
static inline int nfb_nlmsg_ok(const struct nlmsghdr *nlh, int len)
{
    return len >= (int)sizeof(struct nlmsghdr) &&
           nlh->nlmsg_len >= sizeof(struct nlmsghdr) &&
           nlh->nlmsg_len <= (unsigned int)len;
}
