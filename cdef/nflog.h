/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind._nflog: the NFLOG channel.
 *
 * Configuration messages are built with libnetfilter_log's nflog_nlmsg_*;
 * packets are parsed by nfbind's own C helper (cdef/nflog.c) against the
 * kernel's NFULA_* enum, because libnetfilter_log 1.0.2 drops NFULA_VLAN and
 * NFULA_L2HDR (and its header lacks nflog_get_ctid).  Receiving, the wait
 * for acknowledgements, the packet record layout and the constants the
 * channels share are the core's (cdef/core.h, included).
 */

/* <linux/netfilter/nfnetlink_log.h> */
#define NFULNL_CFG_CMD_BIND ...
#define NFULNL_CFG_CMD_UNBIND ...
#define NFULNL_CFG_F_SEQ ...
#define NFULNL_CFG_F_SEQ_GLOBAL ...
#define NFULNL_CFG_F_CONNTRACK ...

#define NFB_LOG_PREFIX_NONE ...
#define NFB_LOG_PREFIX_OTHER ...

struct nfb_log {
    struct nfb_rx rx;
    int family;
    uint64_t filtered;
    struct nfb_hot *hot;
    int nprefixes;
    uint8_t prefix_len[256];
    char prefixes[256][64];
    ...;
};

struct nfb_logcfg {
    int cmd;
    int copy_mode;
    uint32_t copy_range;
    int64_t nlbufsiz;
    int64_t timeout;
    int64_t qthresh;
    int flags;
};

struct nfb_log *nfb_log_new(int fd, uint32_t slot_size, int nslots, int family);
void nfb_log_free(struct nfb_log *l);
int nfb_log_recv(struct nfb_log *l);
/* The hot fields of the current batch's packets into l->hot, one struct
 * nfb_hot per packet, the number of the packet's prefix in extra (1.. in the
 * order this channel first saw them; NFB_LOG_PREFIX_NONE: no prefix;
 * NFB_LOG_PREFIX_OTHER: not numbered).  Returns the packets, or -ENOMEM. */
int nfb_log_hot(struct nfb_log *l);
/* Configure groups[0..ngroups) alike; waits for the kernel's answers.
 * Returns 0 or -errno; *failed_group and *failed_step (NFB_STEP_*) say
 * what failed. */
int nfb_log_config(struct nfb_log *l, const uint16_t *groups, int ngroups,
                   const struct nfb_logcfg *cfg, int timeout_ms,
                   int *failed_group, int *failed_step);
