/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind's C core: everything the three channels share, linked to libmnl
 * only.  Compiled as the module nfbind._nfcore (declared for Python in
 * cdef/core.h), and included by each channel module's source
 * (cdef/nfqueue.c, nflog.c, conntrack.c), whose C code calls it directly:
 *
 *   NFB_CORE_MODULE defined   the functions Python calls are exported
 *   otherwise                 every function is static, a private copy
 *                             inside the channel module
 *
 * Sections: byte-order readers and the attribute walker; the packet record
 * layout of NFQUEUE and NFLOG; the receive batcher (recvmmsg, one MSG_TRUNC
 * policy); the request/answer transaction; the conntrack (CTA_*) parser and
 * the "protocol has ports" rule; conntrack by packet over ctnetlink; the L4
 * checksum; capabilities and prctl.
 */
#ifndef NFB_CORE_C
#define NFB_CORE_C
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "records.h"
#include <errno.h>
#include <endian.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <linux/capability.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>
#include <linux/netfilter.h>
#include <linux/netfilter_arp.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_conntrack_tcp.h>
#include <linux/netfilter/nf_conntrack_sctp.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <libmnl/libmnl.h>

#ifdef NFB_CORE_MODULE
#define NFB_API
#else
#define NFB_API static
#endif

/* ---- byte order, messages, attributes -------------------------------------- */

static inline uint16_t nfb_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return ntohs(v);
}

static inline uint32_t nfb_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return ntohl(v);
}

static inline uint64_t nfb_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}

/* An attribute's type (the nesting and byte-order flags masked off), its
 * payload and the payload's length.  Inline here: the parsers call them for
 * every attribute of every message, where a call into libmnl (through the
 * PLT) costs more than the read itself. */
static inline uint16_t nfb_attr_type(const struct nlattr *a)
{
    return a->nla_type & NLA_TYPE_MASK;
}

static inline const void *nfb_attr_data(const struct nlattr *a)
{
    return (const char *)a + NLA_HDRLEN;
}

static inline uint16_t nfb_attr_len(const struct nlattr *a)
{
    return (uint16_t)(a->nla_len - NLA_HDRLEN);
}

/* a is a whole attribute within the len bytes from a */
static inline int nfb_attr_ok(const struct nlattr *a, int len)
{
    return len >= (int)sizeof(*a) && a->nla_len >= sizeof(*a) && (int)a->nla_len <= len;
}

static inline const struct nlattr *nfb_attr_next(const struct nlattr *a)
{
    return (const struct nlattr *)((const char *)a + NLA_ALIGN(a->nla_len));
}

/* An attribute's payload read as one big-endian integer (the caller checked
 * that the payload is long enough). */
#define nfb_attr_be16(a) nfb_be16(nfb_attr_data(a))
#define nfb_attr_be32(a) nfb_be32(nfb_attr_data(a))
#define nfb_attr_be64(a) nfb_be64(nfb_attr_data(a))
#define nfb_attr_u8(a) (*(const uint8_t *)nfb_attr_data(a))

/* mnl_nlmsg_ok() of libmnl 1.0.4 compares (int)nlmsg_len with the bytes
 * left, so a message claiming 2 GiB or more passes it (a negative int) and
 * mnl_nlmsg_next() then jumps out of the buffer.  This one compares unsigned. */
static inline int nfb_nlmsg_ok(const struct nlmsghdr *nlh, int len)
{
    return len >= (int)sizeof(struct nlmsghdr) &&
           nlh->nlmsg_len >= sizeof(struct nlmsghdr) &&
           nlh->nlmsg_len <= (unsigned int)len;
}

static inline const struct nlmsghdr *nfb_nlmsg_next(const struct nlmsghdr *nlh, int *len)
{
    *len -= (int)NLMSG_ALIGN(nlh->nlmsg_len);
    return (const struct nlmsghdr *)((const char *)nlh + NLMSG_ALIGN(nlh->nlmsg_len));
}

/* Every whole message of buf[0..len); a lying nlmsg_len ends the walk. */
#define nfb_msg_for_each(h, buf, len, remaining)                              \
    for ((h) = (const struct nlmsghdr *)(buf), (remaining) = (int)(len);      \
         nfb_nlmsg_ok((h), (remaining));                                      \
         (h) = nfb_nlmsg_next((h), &(remaining)))

/* The one attribute walker: every attribute wholly inside p[0..len).  What
 * is left is counted from the range's own end (libmnl's mnl_attr_for_each()
 * walks to the aligned end of a message, so with an unaligned nlmsg_len an
 * attribute could reach up to 3 bytes past it); a cut or lying attribute
 * ends the walk. */
#define nfb_attr_for_each(a, p, len)                                          \
    for ((a) = (const struct nlattr *)(p);                                    \
         nfb_attr_ok((a), (int)(len) -                                        \
                     (int)((const char *)(a) - (const char *)(p)));           \
         (a) = nfb_attr_next(a))

/* The attributes nested in attribute n. */
#define nfb_attr_for_each_nested(a, n)                                        \
    nfb_attr_for_each(a, nfb_attr_data(n), nfb_attr_len(n))

/* Where a message's attributes start after its hdrlen-byte family header,
 * and how many bytes of them nlmsg_len holds (negative when it does not even
 * cover that header): the range to give nfb_attr_for_each(). */
static inline const char *nfb_msg_attrs(const struct nlmsghdr *nlh, size_t hdrlen)
{
    return (const char *)nlh + NLMSG_HDRLEN + MNL_ALIGN(hdrlen);
}

static inline int nfb_msg_attrlen(const struct nlmsghdr *nlh, size_t hdrlen)
{
    return (int)nlh->nlmsg_len - (int)(NLMSG_HDRLEN + MNL_ALIGN(hdrlen));
}

/* ---- the packet record of NFQUEUE and NFLOG --------------------------------- */

/* One parsed packet: NFB_F_COUNT uint32_t words.  Offsets (*_OFF) are into
 * the batch's message buffer; NFB_F_ATTRS has one NFB_A_* bit per attribute
 * the kernel sent. */
enum {
    NFB_F_ID,
    NFB_F_ATTRS,
    NFB_F_HWPROTO,
    NFB_F_HOOK,
    NFB_F_FAMILY,
    NFB_F_QUEUE,
    NFB_F_MARK,
    NFB_F_UID,
    NFB_F_GID,
    NFB_F_PRIORITY,
    NFB_F_SKBINFO,
    NFB_F_CAPLEN,
    NFB_F_CTINFO,
    NFB_F_INDEV,
    NFB_F_OUTDEV,
    NFB_F_PHYSINDEV,
    NFB_F_PHYSOUTDEV,
    NFB_F_TS_SEC_HI,
    NFB_F_TS_SEC_LO,
    NFB_F_TS_USEC,
    NFB_F_VLAN_PROTO,
    NFB_F_VLAN_TCI,
    NFB_F_PAYLOAD_OFF,
    NFB_F_PAYLOAD_LEN,
    NFB_F_HWADDR_OFF,
    NFB_F_HWADDR_LEN,
    NFB_F_L2HDR_OFF,
    NFB_F_L2HDR_LEN,
    NFB_F_SECCTX_OFF,
    NFB_F_SECCTX_LEN,
    NFB_F_CT_OFF,
    NFB_F_CT_LEN,
    NFB_F_EXP_OFF,
    NFB_F_EXP_LEN,
    NFB_F_PREFIX_OFF,
    NFB_F_PREFIX_LEN,
    NFB_F_SEQ,
    NFB_F_SEQ_GLOBAL,
    NFB_F_HWTYPE,
    NFB_F_HWHDR_OFF,
    NFB_F_HWHDR_LEN,
    NFB_F_COUNT
};

enum {
    NFB_A_MARK = 1u << 0,
    NFB_A_UID = 1u << 1,
    NFB_A_GID = 1u << 2,
    NFB_A_PRIORITY = 1u << 3,
    NFB_A_SKBINFO = 1u << 4,
    NFB_A_CAPLEN = 1u << 5,
    NFB_A_CTINFO = 1u << 6,
    NFB_A_INDEV = 1u << 7,
    NFB_A_OUTDEV = 1u << 8,
    NFB_A_PHYSINDEV = 1u << 9,
    NFB_A_PHYSOUTDEV = 1u << 10,
    NFB_A_TIMESTAMP = 1u << 11,
    NFB_A_VLAN = 1u << 12,
    NFB_A_PAYLOAD = 1u << 13,
    NFB_A_HWADDR = 1u << 14,
    NFB_A_L2HDR = 1u << 15,
    NFB_A_SECCTX = 1u << 16,
    NFB_A_CT = 1u << 17,
    NFB_A_EXP = 1u << 18,
    NFB_A_PREFIX = 1u << 19,
    NFB_A_SEQ = 1u << 20,
    NFB_A_SEQ_GLOBAL = 1u << 21,
    NFB_A_HWTYPE = 1u << 22,
    NFB_A_HWHDR = 1u << 23,
};

/* NFQA_TIMESTAMP / NFULA_TIMESTAMP: struct { be64 sec; be64 usec; } */
static inline int nfb_rec_timestamp(uint32_t *rec, const char *p, uint16_t len)
{
    uint64_t sec;
    if (len < 16)
        return 0;
    sec = nfb_be64(p);
    rec[NFB_F_TS_SEC_HI] = (uint32_t)(sec >> 32);
    rec[NFB_F_TS_SEC_LO] = (uint32_t)sec;
    rec[NFB_F_TS_USEC] = (uint32_t)nfb_be64(p + 8);
    return 1;
}

/* NFQA_HWADDR / NFULA_HWADDR: struct nfqnl_msg_packet_hw or
 * nfulnl_msg_packet_hw (be16 hw_addrlen, pad, hw_addr[8]). */
#define NFB_REC_HWADDR(rec, p, len, base, hwtype) ({                          \
        const hwtype *hw_ = (const void *)(p);                                \
        int ok_ = (len) >= sizeof(hwtype);                                    \
        if (ok_) {                                                            \
            uint16_t alen_ = ntohs(hw_->hw_addrlen);                          \
            if (alen_ > sizeof(hw_->hw_addr))                                 \
                alen_ = sizeof(hw_->hw_addr);                                 \
            (rec)[NFB_F_HWADDR_OFF] = (uint32_t)((const char *)hw_->hw_addr - (base)); \
            (rec)[NFB_F_HWADDR_LEN] = alen_;                                  \
        }                                                                     \
        ok_;                                                                  \
    })

/* An attribute's bytes as (offset, length) in the words off_field, off_field+1. */
static inline void nfb_rec_range(uint32_t *rec, int off_field, uint32_t off, uint16_t len)
{
    rec[off_field] = off;
    rec[off_field + 1] = len;
}

/* A string attribute without its trailing NULs. */
static inline void nfb_rec_string(uint32_t *rec, int off_field, const char *p, uint32_t off,
                                  uint16_t len)
{
    while (len > 0 && p[len - 1] == '\0')
        len--;
    nfb_rec_range(rec, off_field, off, len);
}

/* struct nfb_hot and NFB_HOT_*: records.h */

static inline void nfb_hot_from_rec(const uint32_t *rec, struct nfb_hot *h)
{
    uint32_t a = rec[NFB_F_ATTRS];
    h->code = (a & NFB_A_MARK ? NFB_HOT_MARK : 0) | (a & NFB_A_INDEV ? NFB_HOT_INDEV : 0) |
              (a & NFB_A_TIMESTAMP ? NFB_HOT_TIMESTAMP : 0);
    h->hw_protocol = rec[NFB_F_HWPROTO];
    h->mark = a & NFB_A_MARK ? rec[NFB_F_MARK] : 0;
    h->indev = a & NFB_A_INDEV ? rec[NFB_F_INDEV] : 0;
    h->payload_len = a & NFB_A_PAYLOAD ? rec[NFB_F_PAYLOAD_LEN] : 0;
    h->extra = 0;
    h->timestamp = a & NFB_A_TIMESTAMP
        ? (double)(((uint64_t)rec[NFB_F_TS_SEC_HI] << 32) | rec[NFB_F_TS_SEC_LO]) +
          (double)rec[NFB_F_TS_USEC] / 1e6
        : 0.0;
}

/* NFQA_VLAN / NFULA_VLAN: nested be16 proto and TCI. */
static inline void nfb_rec_vlan(uint32_t *rec, const struct nlattr *attr,
                                uint16_t proto_type, uint16_t tci_type)
{
    const struct nlattr *va;
    nfb_attr_for_each_nested(va, attr) {
        if (nfb_attr_len(va) < 2)
            continue;
        if (nfb_attr_type(va) == proto_type)
            rec[NFB_F_VLAN_PROTO] = nfb_attr_be16(va);
        else if (nfb_attr_type(va) == tci_type)
            rec[NFB_F_VLAN_TCI] = nfb_attr_be16(va);
    }
}

/* ---- the receive batcher ----------------------------------------------------
 *
 * One non-blocking recvmmsg() brings up to nslots datagrams into slots of
 * slot_size bytes, which are compacted into one contiguous run of netlink
 * messages; where each datagram ends is kept.  A datagram longer than its
 * slot (MSG_TRUNC) is kept as far as it arrived, its last message's
 * nlmsg_len clamped to the slot, and counted in truncated_msgs: its first
 * attributes still identify it (an NFQUEUE packet still gets its verdict, a
 * flow keeps its tuples), and a cut attribute is skipped by the walker.  A
 * message whose nlmsg_len lies (past its datagram, or below a header) ends
 * the walk of its datagram only: the datagram is counted in malformed and
 * the walk goes on with the next one, so one corrupt datagram costs no
 * other packet of the batch.  The same receive serves packet batches, the
 * answers of a transaction and conntrack events.
 *
 * With hold set (NFQUEUE), a packet batch handed out stays held until the
 * caller takes it (clears held): a receive before that hands out the same
 * batch again, so a caller interrupted between the receive and keeping the
 * batch loses nothing.  A transaction or a resize meanwhile parks a held
 * batch in the stash (its messages are handed out again, first). */

struct nfb_rx {
    int fd;
    char *data;             /* current packet batch: contiguous netlink messages */
    size_t data_len;
    uint32_t *recs;         /* npkts packet records of NFB_F_COUNT words */
    int npkts;
    uint64_t overruns;      /* ENOBUFS reported by the kernel */
    uint64_t async_errors;  /* NLMSG_ERRORs that answered no request */
    int last_async_error;
    uint64_t truncated_msgs;    /* datagrams cut by a slot (MSG_TRUNC) */
    uint64_t malformed;     /* datagrams with a message whose length lies */
    uint64_t recv_calls;
    uint64_t send_calls;
    uint64_t ignored;       /* messages that were neither used nor kept */
    int short_read;         /* the last receive found the socket drained */
    int hold;               /* keep a batch handed out until it is taken */
    int held;               /* the current batch was handed out, not yet taken */
    /* private */
    uint32_t seq;
    uint32_t slot_size;
    int nslots;
    char *rbuf;             /* nslots * slot_size: the last receive, compacted */
    size_t pos, end;        /* rbuf[pos..end): messages not yet handled */
    uint32_t *dg_end;       /* where each datagram of the last receive ends in rbuf */
    uint8_t *dg_cut;        /* ... and whether it was cut (MSG_TRUNC) */
    int ndg;
    struct mmsghdr *mm;
    struct iovec *iov;
    int rec_cap;
    char *stash;            /* packet messages read while waiting for answers */
    size_t stash_len, stash_cap;
    int stash_ready;        /* the current batch was parsed from the stash */
};

/* Fill rec from one packet message; return 1 to keep it, 0 to skip it. */
typedef int (*nfb_parse_fn)(void *ctx, const struct nlmsghdr *nlh,
                            const char *base, uint32_t *rec);

static void nfb_rx_park(struct nfb_rx *rx);

static int nfb_rx_alloc(struct nfb_rx *rx, uint32_t slot_size, int nslots)
{
    char *rbuf = malloc((size_t)slot_size * nslots);
    struct mmsghdr *mm = calloc(nslots, sizeof(*mm));
    struct iovec *iov = calloc(nslots, sizeof(*iov));
    uint32_t *recs = malloc(sizeof(uint32_t) * NFB_F_COUNT * nslots);
    uint32_t *dg_end = calloc(nslots, sizeof(*dg_end));
    uint8_t *dg_cut = calloc(nslots, sizeof(*dg_cut));
    if (!rbuf || !mm || !iov || !recs || !dg_end || !dg_cut) {
        free(rbuf); free(mm); free(iov); free(recs); free(dg_end); free(dg_cut);
        return -ENOMEM;
    }
    nfb_rx_park(rx);        /* a held batch lives in rbuf: keep it */
    free(rx->rbuf); free(rx->mm); free(rx->iov); free(rx->recs);
    free(rx->dg_end); free(rx->dg_cut);
    rx->rbuf = rbuf; rx->mm = mm; rx->iov = iov; rx->recs = recs;
    rx->dg_end = dg_end; rx->dg_cut = dg_cut; rx->ndg = 0;
    rx->rec_cap = nslots;
    rx->slot_size = slot_size;
    rx->nslots = nslots;
    rx->data = rbuf;
    rx->data_len = 0;
    rx->npkts = 0;
    rx->pos = rx->end = 0;
    return 0;
}

static int nfb_rx_init(struct nfb_rx *rx, int fd, uint32_t slot_size, int nslots)
{
    memset(rx, 0, sizeof(*rx));
    rx->fd = fd;
    rx->seq = (uint32_t)time(NULL);
    return nfb_rx_alloc(rx, slot_size, nslots);
}

static void nfb_rx_release(struct nfb_rx *rx)
{
    free(rx->rbuf); free(rx->mm); free(rx->iov); free(rx->recs);
    free(rx->dg_end); free(rx->dg_cut);
    free(rx->stash);
    memset(rx, 0, sizeof(*rx));
}

static int nfb_rx_grow_recs(struct nfb_rx *rx, int need)
{
    uint32_t *r;
    int cap = rx->rec_cap;
    if (need <= cap)
        return 0;
    while (cap < need)
        cap *= 2;
    r = realloc(rx->recs, sizeof(uint32_t) * NFB_F_COUNT * cap);
    if (!r)
        return -ENOMEM;
    rx->recs = r;
    rx->rec_cap = cap;
    return 0;
}

/* An NLMSG_ERROR that answers no request: counted (an ack, error 0, is not). */
static void nfb_rx_async_error(struct nfb_rx *rx, const struct nlmsghdr *h)
{
    const struct nlmsgerr *err = mnl_nlmsg_get_payload(h);
    /* too short to hold an error code: its bytes would be stale, not counted */
    if (h->nlmsg_len >= mnl_nlmsg_size(sizeof(*err)) && err->error) {
        rx->async_errors++;
        /* negated in unsigned: a lying error of INT_MIN is no overflow */
        rx->last_async_error = (int)(0u - (unsigned int)err->error);
    }
}

/* Parse the messages of data[from..to) (one datagram, or messages known to
 * be whole) into records from record n on; returns the new count, or
 * -ENOMEM.  Offsets in the records are relative to data.  A message whose
 * nlmsg_len does not fit ends the walk: counted in malformed unless the
 * range was cut by its slot (then it is counted in truncated_msgs). */
static int nfb_rx_parse_range(struct nfb_rx *rx, char *data, size_t from, size_t to,
                              int cut, int n, uint16_t pkt_type, nfb_parse_fn fn,
                              void *ctx)
{
    const struct nlmsghdr *nlh;
    int remaining;

    nfb_msg_for_each(nlh, data + from, to - from, remaining) {
        if (nlh->nlmsg_type == NLMSG_ERROR) {
            nfb_rx_async_error(rx, nlh);
        } else if (nlh->nlmsg_type == pkt_type &&
                   nlh->nlmsg_len >= NLMSG_HDRLEN + sizeof(struct nfgenmsg)) {
            uint32_t *rec;
            if (nfb_rx_grow_recs(rx, n + 1) < 0)
                return -ENOMEM;
            rec = rx->recs + (size_t)n * NFB_F_COUNT;
            memset(rec, 0, sizeof(uint32_t) * NFB_F_COUNT);
            n += fn(ctx, nlh, data, rec);
        }
    }
    if (remaining > 0 && !cut)
        rx->malformed++;
    return n;
}

/* Parse data[0..len) as one run of messages: packets through fn into
 * records, errors counted. */
static int nfb_rx_parse(struct nfb_rx *rx, char *data, size_t len,
                        uint16_t pkt_type, nfb_parse_fn fn, void *ctx)
{
    int n;

    rx->data = data;
    rx->data_len = len;
    rx->npkts = 0;
    n = nfb_rx_parse_range(rx, data, 0, len, 0, 0, pkt_type, fn, ctx);
    if (n < 0)
        return n;
    rx->npkts = n;
    return n;
}

/* Parse what the last receive brought, datagram by datagram. */
static int nfb_rx_parse_dgrams(struct nfb_rx *rx, uint16_t pkt_type, nfb_parse_fn fn,
                               void *ctx)
{
    size_t from = 0;
    int i, n = 0;

    rx->data = rx->rbuf;
    rx->data_len = rx->end;
    rx->npkts = 0;
    for (i = 0; i < rx->ndg; i++) {
        size_t to = rx->dg_end[i];
        n = nfb_rx_parse_range(rx, rx->rbuf, from, to, rx->dg_cut[i], n, pkt_type,
                               fn, ctx);
        if (n < 0)
            return n;
        from = to;
    }
    rx->npkts = n;
    return n;
}

/* The end of the datagram of the last receive that holds rbuf[pos]. */
static size_t nfb_rx_dgram_end(const struct nfb_rx *rx, size_t pos, int *cut)
{
    int i;
    for (i = 0; i < rx->ndg; i++)
        if (rx->dg_end[i] > pos) {
            *cut = rx->dg_cut[i];
            return rx->dg_end[i];
        }
    *cut = 0;
    return rx->end;
}

/* One non-blocking receive into rbuf; the messages are rbuf[0..end).
 * Returns the number of datagrams, 0 when none was waiting, or -errno
 * (-ENOBUFS counted in overruns). */
static int nfb_rx_fill(struct nfb_rx *rx)
{
    int i, r;
    size_t used = 0, cap = (size_t)rx->slot_size * rx->nslots;

    rx->pos = rx->end = 0;
    rx->ndg = 0;
    for (i = 0; i < rx->nslots; i++) {
        rx->iov[i].iov_base = rx->rbuf + (size_t)i * rx->slot_size;
        rx->iov[i].iov_len = rx->slot_size;
        memset(&rx->mm[i].msg_hdr, 0, sizeof(rx->mm[i].msg_hdr));
        rx->mm[i].msg_hdr.msg_iov = &rx->iov[i];
        rx->mm[i].msg_hdr.msg_iovlen = 1;
        rx->mm[i].msg_len = 0;
    }
    rx->recv_calls++;
    r = recvmmsg(rx->fd, rx->mm, rx->nslots, MSG_DONTWAIT, NULL);
    /* fewer messages than slots: the socket was empty when the call ended,
     * so the caller can wait in poll() instead of asking again */
    rx->short_read = r < rx->nslots;
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        if (errno == ENOBUFS)
            rx->overruns++;
        return -errno;
    }
    /* compact the datagrams into one contiguous run of messages */
    for (i = 0; i < r; i++) {
        size_t l = rx->mm[i].msg_len;
        char *src = rx->rbuf + (size_t)i * rx->slot_size;
        int cut = 0;
        if (rx->mm[i].msg_hdr.msg_flags & MSG_TRUNC) {
            rx->truncated_msgs++;
            cut = 1;
            l = rx->slot_size & ~(size_t)(NLMSG_ALIGNTO - 1);
            if (l >= NLMSG_HDRLEN && ((struct nlmsghdr *)src)->nlmsg_len > l)
                ((struct nlmsghdr *)src)->nlmsg_len = (uint32_t)l;
        }
        if (src != rx->rbuf + used)
            memmove(rx->rbuf + used, src, l);
        /* a datagram of unaligned length: its padding is zeros, not what the
         * buffer held before (a lying nlmsg_len must not read stale bytes) */
        if (NLMSG_ALIGN(l) != l && used + NLMSG_ALIGN(l) <= cap)
            memset(rx->rbuf + used + l, 0, NLMSG_ALIGN(l) - l);
        used += NLMSG_ALIGN(l);
        if (used > cap)
            used = cap;
        rx->dg_end[i] = (uint32_t)used;
        rx->dg_cut[i] = (uint8_t)cut;
    }
    rx->ndg = r;
    rx->end = used;
    return r;
}

/* Drain what is readable now into one packet batch; never blocks.  Returns
 * the number of records, 0 when nothing was waiting, or -errno.  Packets a
 * transaction read meanwhile (the stash) come first.  With hold, a batch
 * not yet taken is handed out again. */
static int nfb_rx_recv(struct nfb_rx *rx, uint16_t pkt_type, nfb_parse_fn fn, void *ctx)
{
    int r;

    if (rx->held)
        return rx->npkts;
    rx->npkts = 0;
    rx->data_len = 0;
    if (rx->stash_ready) {
        /* the previous batch came from the stash: it is consumed now */
        rx->stash_ready = 0;
        rx->stash_len = 0;
    }
    if (rx->stash_len) {
        rx->stash_ready = 1;
        rx->short_read = 0;
        r = nfb_rx_parse(rx, rx->stash, rx->stash_len, pkt_type, fn, ctx);
    } else {
        r = nfb_rx_fill(rx);
        if (r < 0)
            return r;
        rx->pos = rx->end;
        r = nfb_rx_parse_dgrams(rx, pkt_type, fn, ctx);
    }
    if (r > 0 && rx->hold)
        rx->held = 1;
    return r;
}

/* Keep a packet message read while waiting for an answer, for the next
 * nfb_rx_recv(). */
static void nfb_rx_stash(struct nfb_rx *rx, const struct nlmsghdr *nlh)
{
    size_t l = NLMSG_ALIGN(nlh->nlmsg_len);
    if (rx->stash_ready) {
        /* the stash was handed out as the current batch: it is consumed */
        rx->stash_ready = 0;
        rx->stash_len = 0;
    }
    if (rx->stash_len + l > rx->stash_cap) {
        size_t cap = rx->stash_cap ? rx->stash_cap : 65536;
        char *s;
        while (cap < rx->stash_len + l)
            cap *= 2;
        s = realloc(rx->stash, cap);
        if (!s) {
            rx->ignored++;
            return;
        }
        rx->stash = s;
        rx->stash_cap = cap;
    }
    memcpy(rx->stash + rx->stash_len, nlh, nlh->nlmsg_len);
    memset(rx->stash + rx->stash_len + nlh->nlmsg_len, 0, l - nlh->nlmsg_len);
    rx->stash_len += l;
    rx->short_read = 0;     /* the next receive has these to hand out */
}

/* A batch handed out and not taken is about to lose its buffer (a
 * transaction reads into rbuf, a resize frees it): keep its messages in the
 * stash, which the next receive hands out first.  Its packet messages are
 * whole (the parser took them), so they are kept as they are. */
static void nfb_rx_park(struct nfb_rx *rx)
{
    const struct nlmsghdr *nlh;
    size_t from = 0;
    int i, remaining;

    if (!rx->held)
        return;
    rx->held = 0;
    rx->npkts = 0;
    rx->data_len = 0;
    if (rx->stash_ready) {
        /* it is the stash itself: hand it out again */
        rx->stash_ready = 0;
        return;
    }
    /* it is in rbuf, so the stash was empty when it was handed out; its
     * errors were counted then, and its packet messages are kept */
    for (i = 0; i < rx->ndg; i++) {
        nfb_msg_for_each(nlh, rx->rbuf + from, rx->dg_end[i] - from, remaining) {
            if (nlh->nlmsg_type >= NLMSG_MIN_TYPE)
                nfb_rx_stash(rx, nlh);
        }
        from = rx->dg_end[i];
    }
}

/* ---- the request/answer transaction -------------------------------------------
 *
 * Requests go out in one send(), each with its own sequence number; the
 * answers are read with the batcher above and routed by sequence number:
 * NLMSG_ERROR (an ack when its error is 0) and NLMSG_DONE end a request;
 * other messages of a request go to on_data (a GET's flow, a dump's flows);
 * messages of no request are kept for the next packet receive (stash: the
 * packets of an NFQUEUE/NFLOG socket) or counted as ignored (stale answers
 * to an earlier request on a request socket). */

struct nfb_txn {
    int nmsg;               /* requests */
    const uint32_t *seqs;   /* their sequence numbers */
    int *results;           /* each: 1 unanswered, 0 done, -errno */
    int pending;            /* requests still unanswered */
    int failed;             /* an answer was an error */
    int stash;              /* keep messages of no request (packets) */
    int overrun_ends;       /* ENOBUFS ends the wait (an answer was lost) */
    int unsent;             /* requests not sent yet (the last ones) */
    /* a message answering request i; returns 0 to go on, 1 to pause the
     * wait (the messages after it stay for the next call), or -errno */
    int (*on_data)(void *ctx, const struct nlmsghdr *h, int i);
    void *ctx;
    char errmsg[128];       /* the kernel's extended-ack text of an error */
};

static void nfb_txn_init(struct nfb_txn *t, int nmsg, const uint32_t *seqs, int *results)
{
    int i;
    memset(t, 0, sizeof(*t));
    t->nmsg = nmsg;
    t->seqs = seqs;
    t->results = results;
    for (i = 0; i < nmsg; i++)
        results[i] = 1;
    t->pending = nmsg;
}

/* Pick the extended-ack message (NLMSGERR_ATTR_MSG) out of an error. */
static void nfb_extack(char *out, size_t cap, const struct nlmsghdr *h)
{
    const struct nlmsgerr *e = mnl_nlmsg_get_payload(h);
    const struct nlattr *a;
    size_t off;
    if (!(h->nlmsg_flags & NLM_F_ACK_TLVS) ||
        h->nlmsg_len < NLMSG_HDRLEN + sizeof(*e))
        return;
    /* the TLVs follow the error and, unless capped, the echoed request */
    off = sizeof(*e);
    if (!(h->nlmsg_flags & NLM_F_CAPPED)) {
        if (e->msg.nlmsg_len < sizeof(e->msg))
            return;
        off += e->msg.nlmsg_len - sizeof(e->msg);
    }
    off = NLMSG_ALIGN(off);
    if (NLMSG_HDRLEN + off > h->nlmsg_len)
        return;
    nfb_attr_for_each(a, (const char *)e + off, h->nlmsg_len - NLMSG_HDRLEN - off) {
        if (nfb_attr_type(a) == NLMSGERR_ATTR_MSG) {
            size_t n = strnlen(nfb_attr_data(a), nfb_attr_len(a));
            if (n >= cap)
                n = cap - 1;
            memcpy(out, nfb_attr_data(a), n);
            out[n] = '\0';
        }
    }
}

/* Request i got its final answer: 0 or -errno. */
static void nfb_txn_finish(struct nfb_txn *t, int i, int result)
{
    t->results[i] = result;
    t->pending--;
    if (result)
        t->failed = 1;
}

/* Route one message of an answer.  Returns 0, 1 (on_data paused) or -errno. */
static int nfb_txn_route(struct nfb_rx *rx, struct nfb_txn *t, const struct nlmsghdr *h)
{
    int i;

    for (i = 0; i < t->nmsg; i++)
        if (h->nlmsg_seq == t->seqs[i] && t->results[i] == 1)
            break;
    if (i == t->nmsg) {     /* answers no pending request */
        if (!t->stash) {
            rx->ignored++;
        } else if (h->nlmsg_type == NLMSG_ERROR) {
            nfb_rx_async_error(rx, h);
        } else if (h->nlmsg_type >= NLMSG_MIN_TYPE) {
            nfb_rx_stash(rx, h);
        }
        return 0;
    }
    if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = mnl_nlmsg_get_payload(h);
        if (h->nlmsg_len < mnl_nlmsg_size(sizeof(*e))) {
            nfb_txn_finish(t, i, -EBADMSG);
        } else {
            if (e->error)
                nfb_extack(t->errmsg, sizeof(t->errmsg), h);
            nfb_txn_finish(t, i, e->error);
        }
        return 0;
    }
    if (h->nlmsg_type == NLMSG_DONE) {
        int err = 0;
        if (h->nlmsg_len >= NLMSG_HDRLEN + sizeof(int))
            memcpy(&err, mnl_nlmsg_get_payload(h), sizeof(err));
        nfb_txn_finish(t, i, err < 0 ? err : 0);
        return 0;
    }
    if (h->nlmsg_type < NLMSG_MIN_TYPE || !t->on_data) {
        rx->ignored++;
        return 0;
    }
    return t->on_data(t->ctx, h, i);
}

/* Send len bytes of requests in one send().  0 or -errno. */
static int nfb_rx_send(struct nfb_rx *rx, const void *buf, size_t len)
{
    ssize_t r;
    rx->send_calls++;
    do {
        r = send(rx->fd, buf, len, 0);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

/* Read and route answers until every request has its final answer (0),
 * on_data pauses (1; call again to go on), or -errno: -ETIMEDOUT when
 * nothing arrived for timeout_ms (100 ms once a request failed: without
 * CAP_NET_ADMIN nfnetlink answers only the first message of a send). */
static int nfb_rx_answers(struct nfb_rx *rx, struct nfb_txn *t, int timeout_ms)
{
    for (;;) {
        while (rx->pos < rx->end) {
            const struct nlmsghdr *h = (const struct nlmsghdr *)(rx->rbuf + rx->pos);
            int cut;
            size_t dend = nfb_rx_dgram_end(rx, rx->pos, &cut);
            size_t left = dend - rx->pos;
            int rc;
            if (!nfb_nlmsg_ok(h, (int)left)) {
                /* the rest of this datagram is no message: on with the next */
                if (!cut)
                    rx->malformed++;
                rx->pos = dend;
                continue;
            }
            rx->pos += NLMSG_ALIGN(h->nlmsg_len) < left ? NLMSG_ALIGN(h->nlmsg_len) : left;
            rc = nfb_txn_route(rx, t, h);
            if (rc)
                return rc;
        }
        if (t->pending == t->unsent)    /* every request sent was answered */
            return 0;
        int r = nfb_rx_fill(rx);
        if (r < 0) {
            if (r == -ENOBUFS && !t->overrun_ends)
                continue;
            return r;
        }
        if (r == 0) {
            struct pollfd pfd = { .fd = rx->fd, .events = POLLIN };
            int pr = poll(&pfd, 1, t->failed ? 100 : timeout_ms);
            if (pr < 0 && errno != EINTR)
                return -errno;
            if (pr == 0)
                return -ETIMEDOUT;
        }
    }
}

/* Room an acknowledgement takes in a socket's receive buffer: its skb's
 * true size (a small message, the sk_buff and its shared info; an error
 * echoes the request too) is about 1 to 1.5 KiB. */
#define NFB_ACK_ROOM 2048

/* How many requests may be sent at once: their answers must fit in the
 * receive buffer, or the kernel drops the ones that do not (the socket
 * overruns) and the wait for them times out. */
static int nfb_rx_acks_fit(const struct nfb_rx *rx)
{
    int size = 0;
    socklen_t len = sizeof(size);
    if (getsockopt(rx->fd, SOL_SOCKET, SO_RCVBUF, &size, &len) < 0)
        return 1;
    return size / NFB_ACK_ROOM > 1 ? size / NFB_ACK_ROOM : 1;
}

/* Send nmsg requests (buf[0..len), each with NLM_F_ACK and its seqs[i]) and
 * wait for their answers; t was set up by nfb_txn_init().  They go in one
 * send, or, when their answers would not fit in the receive buffer (a small
 * rcvbuf, many requests), in turn in groups whose answers fit, each group
 * answered before the next is sent.  Returns 0 (each request's result in
 * t->results: 0, -errno, or 1 when no answer came), or -errno of a send or
 * of a wait (the requests after it are not sent). */
static int nfb_rx_transact(struct nfb_rx *rx, struct nfb_txn *t, const char *buf,
                           size_t len, int timeout_ms)
{
    int rc = 0, per, sent = 0;
    size_t off = 0;
    if (t->nmsg == 0)
        return 0;
    per = nfb_rx_acks_fit(rx);
    nfb_rx_park(rx);        /* the answers are read into rbuf */
    while (sent < t->nmsg) {
        size_t start = off;
        int k = t->nmsg - sent < per ? t->nmsg - sent : per, j;
        for (j = 0; j < k && off < len; j++)
            off += NLMSG_ALIGN(((const struct nlmsghdr *)(buf + off))->nlmsg_len);
        if (off > len)
            off = len;
        sent += k;
        t->unsent = t->nmsg - sent;
        rc = nfb_rx_send(rx, buf + start, off - start);
        if (rc < 0)
            break;
        do {
            rc = nfb_rx_answers(rx, t, timeout_ms);
        } while (rc == 1);
        if (rc < 0)
            break;
    }
    t->unsent = 0;
    return rc;
}

/* The steps of a channel's configuration (one request each), for reporting
 * which one the kernel refused. */
enum nfb_step {
    NFB_STEP_NONE,
    NFB_STEP_BIND,          /* the bind or unbind command */
    NFB_STEP_PARAMS,        /* copy mode and copy range */
    NFB_STEP_QMAXLEN,       /* NFQUEUE: the queue's length */
    NFB_STEP_FLAGS,         /* the NFQA_CFG_F_* / NFULNL_CFG_F_* flags */
    NFB_STEP_NLBUFSIZ,      /* NFLOG: the kernel's buffer size */
    NFB_STEP_TIMEOUT,       /* NFLOG: the flush timeout */
    NFB_STEP_QTHRESH,       /* NFLOG: the batching threshold */
};

/* The first failure among the results (0 when none): its -errno, and in
 * *failed_step its steps[] entry.  A timeout (rc) is reported only when
 * nothing failed, with the step of the first unanswered request. */
static int nfb_txn_first_error(int rc, const struct nfb_txn *t, const int *steps,
                               int *failed_step)
{
    int i;
    *failed_step = NFB_STEP_NONE;
    for (i = 0; i < t->nmsg; i++)
        if (t->results[i] < 0) {
            *failed_step = steps[i];
            return t->results[i];
        }
    if (rc < 0) {
        for (i = 0; i < t->nmsg; i++)
            if (t->results[i] == 1) {
                *failed_step = steps[i];
                break;
            }
        if (*failed_step == NFB_STEP_NONE && t->nmsg)
            *failed_step = steps[0];
    }
    return rc;
}

/* ---- conntrack records: the CTA_* parser ------------------------------------------ */

/* Whether conntrack keys a protocol's tuples by the port attributes
 * (CTA_PROTO_SRC_PORT / _DST_PORT).  GRE does: the kernel's GRE tracker
 * puts its keys there (PPTP's call ids; 0 and 0 for GRE version 0), as
 * `conntrack -L` shows them (srckey=, dstkey=). */
NFB_API int nfb_proto_has_ports(uint8_t proto)
{
    switch (proto) {
    case IPPROTO_TCP:
    case IPPROTO_UDP:
    case IPPROTO_UDPLITE:
    case IPPROTO_SCTP:
    case IPPROTO_DCCP:
    case IPPROTO_GRE:
        return 1;
    }
    return 0;
}

/* struct nfb_ct_tuple, NFB_T_*, struct nfb_ct_rec: records.h */

/* CTA_PROTOINFO_TCP packed into one 64-bit value (one dictionary key in
 * Python, where few distinct values occur): the state, the window scales
 * and the flags bytes of struct nf_ct_tcp_flags of both directions at the
 * shifts below, and one NFB_TCP_HAS_* bit for each the kernel sent (a
 * DESTROY event carries the state only). */
enum {
    NFB_TCP_STATE_SHIFT = 0,
    NFB_TCP_WSCALE_ORIG_SHIFT = 8,
    NFB_TCP_WSCALE_REPLY_SHIFT = 16,
    NFB_TCP_FLAGS_ORIG_SHIFT = 24,
    NFB_TCP_FLAGS_REPLY_SHIFT = 32,
    NFB_TCP_HAS_SHIFT = 40,
};
#define NFB_TCP_HAS_STATE (1ull << (NFB_TCP_HAS_SHIFT + 0))
#define NFB_TCP_HAS_WSCALE_ORIG (1ull << (NFB_TCP_HAS_SHIFT + 1))
#define NFB_TCP_HAS_WSCALE_REPLY (1ull << (NFB_TCP_HAS_SHIFT + 2))
#define NFB_TCP_HAS_FLAGS_ORIG (1ull << (NFB_TCP_HAS_SHIFT + 3))
#define NFB_TCP_HAS_FLAGS_REPLY (1ull << (NFB_TCP_HAS_SHIFT + 4))

/* NFB_CT_A_*: records.h */

/* Where a record's strings go: append len bytes at p, return their offset
 * (or -1).  Without one, offsets are relative to the parsed attributes. */
typedef int64_t (*nfb_ct_sink)(void *ctx, const void *p, size_t len);

static void nfb_ct_parse_tuple(const struct nlattr *nest, struct nfb_ct_tuple *t)
{
    const struct nlattr *a, *b;
    nfb_attr_for_each_nested(a, nest) {
        uint16_t len = nfb_attr_len(a);
        switch (nfb_attr_type(a)) {
        case CTA_TUPLE_IP:
            nfb_attr_for_each(b, nfb_attr_data(a), len) {
                uint16_t bl = nfb_attr_len(b);
                switch (nfb_attr_type(b)) {
                case CTA_IP_V4_SRC:
                case CTA_IP_V6_SRC:
                    if (bl == 4 || bl == 16) {
                        memcpy(t->src, nfb_attr_data(b), bl);
                        t->has |= NFB_T_ADDR | (bl == 16 ? NFB_T_V6 : 0);
                    }
                    break;
                case CTA_IP_V4_DST:
                case CTA_IP_V6_DST:
                    if (bl == 4 || bl == 16) {
                        memcpy(t->dst, nfb_attr_data(b), bl);
                        t->has |= NFB_T_ADDR | (bl == 16 ? NFB_T_V6 : 0);
                    }
                    break;
                }
            }
            break;
        case CTA_TUPLE_PROTO:
            nfb_attr_for_each(b, nfb_attr_data(a), len) {
                uint16_t bl = nfb_attr_len(b);
                switch (nfb_attr_type(b)) {
                case CTA_PROTO_NUM:
                    if (bl >= 1) {
                        t->proto = nfb_attr_u8(b);
                        t->has |= NFB_T_PROTO;
                    }
                    break;
                case CTA_PROTO_SRC_PORT:
                    if (bl >= 2) {
                        t->sport = nfb_attr_be16(b);
                        t->has |= NFB_T_PORTS;
                    }
                    break;
                case CTA_PROTO_DST_PORT:
                    if (bl >= 2) {
                        t->dport = nfb_attr_be16(b);
                        t->has |= NFB_T_PORTS;
                    }
                    break;
                case CTA_PROTO_ICMP_ID:
                case CTA_PROTO_ICMPV6_ID:
                    if (bl >= 2) {
                        t->icmp_id = nfb_attr_be16(b);
                        t->has |= NFB_T_ICMP;
                    }
                    break;
                case CTA_PROTO_ICMP_TYPE:
                case CTA_PROTO_ICMPV6_TYPE:
                    if (bl >= 1) {
                        t->icmp_type = nfb_attr_u8(b);
                        t->has |= NFB_T_ICMP;
                    }
                    break;
                case CTA_PROTO_ICMP_CODE:
                case CTA_PROTO_ICMPV6_CODE:
                    if (bl >= 1) {
                        t->icmp_code = nfb_attr_u8(b);
                        t->has |= NFB_T_ICMP;
                    }
                    break;
                }
            }
            break;
        case CTA_TUPLE_ZONE:
            if (len >= 2) {
                t->zone = nfb_attr_be16(a);
                t->has |= NFB_T_ZONE;
            }
            break;
        }
    }
}

static uint32_t nfb_ct_parse_counters(const struct nlattr *nest, uint64_t *pk, uint64_t *by)
{
    const struct nlattr *a;
    uint32_t got = 0;
    nfb_attr_for_each_nested(a, nest) {
        uint16_t len = nfb_attr_len(a);
        switch (nfb_attr_type(a)) {
        case CTA_COUNTERS_PACKETS:
            if (len >= 8) {
                *pk = nfb_attr_be64(a);
                got = 1;
            }
            break;
        case CTA_COUNTERS_BYTES:
            if (len >= 8) {
                *by = nfb_attr_be64(a);
                got = 1;
            }
            break;
        case CTA_COUNTERS32_PACKETS:
            if (len >= 4) {
                *pk = nfb_attr_be32(a);
                got = 1;
            }
            break;
        case CTA_COUNTERS32_BYTES:
            if (len >= 4) {
                *by = nfb_attr_be32(a);
                got = 1;
            }
            break;
        }
    }
    return got ? NFB_CT_A_COUNTERS : 0;
}

/* CTA_PROTOINFO_TCP: the state (also r->state) and the window scales and
 * flags of both directions, packed into r->tcp.  Returns the NFB_CT_A_* bits. */
static uint32_t nfb_ct_parse_tcp(const struct nlattr *nest, struct nfb_ct_rec *r)
{
    const struct nlattr *a;
    uint32_t got = NFB_CT_A_TCP;
    uint64_t v = 0;
    nfb_attr_for_each_nested(a, nest) {
        uint64_t b;
        int shift;
        if (nfb_attr_len(a) < 1)
            continue;
        b = nfb_attr_u8(a);
        switch (nfb_attr_type(a)) {
        case CTA_PROTOINFO_TCP_STATE:
            r->state = (uint8_t)b;
            got |= NFB_CT_A_STATE;
            shift = NFB_TCP_STATE_SHIFT;
            break;
        case CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: shift = NFB_TCP_WSCALE_ORIG_SHIFT; break;
        case CTA_PROTOINFO_TCP_WSCALE_REPLY: shift = NFB_TCP_WSCALE_REPLY_SHIFT; break;
        /* struct nf_ct_tcp_flags: the flags byte comes first */
        case CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: shift = NFB_TCP_FLAGS_ORIG_SHIFT; break;
        case CTA_PROTOINFO_TCP_FLAGS_REPLY: shift = NFB_TCP_FLAGS_REPLY_SHIFT; break;
        default: continue;
        }
        v &= ~(0xffull << shift);
        v |= b << shift;
        v |= 1ull << (NFB_TCP_HAS_SHIFT + shift / 8);
    }
    r->tcp = v;
    return got;
}

/* A nest of n be32 attributes numbered first..first+n-1 (CTA_SEQADJ_*,
 * CTA_SYNPROXY_*) into out[0..n); bit when all of them were there. */
static uint32_t nfb_ct_parse_u32s(const struct nlattr *nest, uint32_t *out, int n,
                                  uint16_t first, uint32_t bit)
{
    const struct nlattr *a;
    unsigned int seen = 0;
    nfb_attr_for_each_nested(a, nest) {
        int i = (int)nfb_attr_type(a) - first;
        if (i < 0 || i >= n || nfb_attr_len(a) < 4)
            continue;
        out[i] = nfb_attr_be32(a);
        seen |= 1u << i;
    }
    return seen == (1u << n) - 1 ? bit : 0;
}

/* CTA_* attributes that carry one be32: its presence bit (0: not such an
 * attribute) and where it goes in the record. */
static const uint32_t nfb_ct_u32_bit[CTA_MAX + 1] = {
    [CTA_STATUS] = NFB_CT_A_STATUS,
    [CTA_TIMEOUT] = NFB_CT_A_TIMEOUT,
    [CTA_MARK] = NFB_CT_A_MARK,
    [CTA_SECMARK] = NFB_CT_A_SECMARK,
    [CTA_USE] = NFB_CT_A_USE,
    [CTA_ID] = NFB_CT_A_ID,
};
static const size_t nfb_ct_u32_off[CTA_MAX + 1] = {
    [CTA_STATUS] = offsetof(struct nfb_ct_rec, status),
    [CTA_TIMEOUT] = offsetof(struct nfb_ct_rec, timeout),
    [CTA_MARK] = offsetof(struct nfb_ct_rec, mark),
    [CTA_SECMARK] = offsetof(struct nfb_ct_rec, secmark),
    [CTA_USE] = offsetof(struct nfb_ct_rec, use),
    [CTA_ID] = offsetof(struct nfb_ct_rec, id),
};

/* A NUL-padded string attribute into dst[cap], NUL-terminated. */
static void nfb_ct_cstr(char *dst, size_t cap, const struct nlattr *a)
{
    size_t n = strnlen(nfb_attr_data(a), nfb_attr_len(a));
    if (n > cap - 1)
        n = cap - 1;
    memcpy(dst, nfb_attr_data(a), n);
    dst[n] = '\0';
}

/* Parse the CTA_* attributes at p[0..len) into r (a dump's or an event's
 * flow, or the NFQA_CT / NFULA_CT of a packet); family is the message's.
 * The security context goes to sink (see nfb_ct_sink). */
static void nfb_ct_parse(const char *p, size_t len, uint8_t family, struct nfb_ct_rec *r,
                         nfb_ct_sink sink, void *ctx)
{
    const struct nlattr *a, *b;
    uint32_t attrs = 0;

    memset(r, 0, sizeof(*r));
    r->family = family;
    nfb_attr_for_each(a, p, len) {
        uint16_t al = nfb_attr_len(a);
        uint16_t type = nfb_attr_type(a);
        if (type <= CTA_MAX && nfb_ct_u32_bit[type]) {
            if (al >= 4) {
                uint32_t v = nfb_attr_be32(a);
                memcpy((char *)r + nfb_ct_u32_off[type], &v, sizeof(v));
                attrs |= nfb_ct_u32_bit[type];
            }
            continue;
        }
        switch (type) {
        case CTA_TUPLE_ORIG:
            nfb_ct_parse_tuple(a, &r->orig);
            attrs |= NFB_CT_A_ORIG | (r->orig.has & NFB_T_ZONE ? NFB_CT_A_TUPLE_ZONE : 0);
            break;
        case CTA_TUPLE_REPLY:
            nfb_ct_parse_tuple(a, &r->reply);
            attrs |= NFB_CT_A_REPLY | (r->reply.has & NFB_T_ZONE ? NFB_CT_A_TUPLE_ZONE : 0);
            break;
        case CTA_TUPLE_MASTER:
            nfb_ct_parse_tuple(a, &r->master);
            attrs |= NFB_CT_A_MASTER;
            break;
        case CTA_ZONE:
            if (al >= 2) {
                r->zone = nfb_attr_be16(a);
                attrs |= NFB_CT_A_ZONE;
            }
            break;
        case CTA_PROTOINFO:
            nfb_attr_for_each_nested(b, a) {
                const struct nlattr *s;
                int want;
                switch (nfb_attr_type(b)) {
                case CTA_PROTOINFO_TCP:
                    attrs |= nfb_ct_parse_tcp(b, r);
                    continue;
                case CTA_PROTOINFO_SCTP: want = CTA_PROTOINFO_SCTP_STATE; break;
                case CTA_PROTOINFO_DCCP: want = CTA_PROTOINFO_DCCP_STATE; break;
                default: continue;
                }
                nfb_attr_for_each_nested(s, b) {
                    if (nfb_attr_type(s) == want && nfb_attr_len(s) >= 1) {
                        r->state = nfb_attr_u8(s);
                        attrs |= NFB_CT_A_STATE;
                    }
                }
            }
            break;
        case CTA_SEQ_ADJ_ORIG:
            attrs |= nfb_ct_parse_u32s(a, r->seqadj, 3, CTA_SEQADJ_CORRECTION_POS,
                                       NFB_CT_A_SEQADJ_ORIG);
            break;
        case CTA_SEQ_ADJ_REPLY:
            attrs |= nfb_ct_parse_u32s(a, r->seqadj + 3, 3, CTA_SEQADJ_CORRECTION_POS,
                                       NFB_CT_A_SEQADJ_REPLY);
            break;
        case CTA_SYNPROXY:
            /* every flow made over ctnetlink carries an empty extension:
             * all zeros is no SYNPROXY state */
            if (nfb_ct_parse_u32s(a, r->synproxy, 3, CTA_SYNPROXY_ISN, NFB_CT_A_SYNPROXY) &&
                (r->synproxy[0] | r->synproxy[1] | r->synproxy[2]))
                attrs |= NFB_CT_A_SYNPROXY;
            break;
        case CTA_COUNTERS_ORIG:
            attrs |= nfb_ct_parse_counters(a, &r->o_packets, &r->o_bytes);
            break;
        case CTA_COUNTERS_REPLY:
            attrs |= nfb_ct_parse_counters(a, &r->r_packets, &r->r_bytes);
            break;
        case CTA_TIMESTAMP:
            nfb_attr_for_each_nested(b, a) {
                if (nfb_attr_len(b) < 8)
                    continue;
                if (nfb_attr_type(b) == CTA_TIMESTAMP_START) {
                    r->ts_start = nfb_attr_be64(b);
                    attrs |= NFB_CT_A_TS_START;
                } else if (nfb_attr_type(b) == CTA_TIMESTAMP_STOP) {
                    r->ts_stop = nfb_attr_be64(b);
                    attrs |= NFB_CT_A_TS_STOP;
                }
            }
            break;
        case CTA_LABELS:
            memcpy(r->labels, nfb_attr_data(a), al < 16 ? al : 16);
            attrs |= NFB_CT_A_LABELS;
            break;
        case CTA_HELP:
            nfb_attr_for_each_nested(b, a) {
                if (nfb_attr_type(b) == CTA_HELP_NAME) {
                    nfb_ct_cstr(r->helper, sizeof(r->helper), b);
                    attrs |= NFB_CT_A_HELPER;
                }
            }
            break;
        case CTA_SECCTX:
            nfb_attr_for_each_nested(b, a) {
                if (nfb_attr_type(b) == CTA_SECCTX_NAME) {
                    const char *s = nfb_attr_data(b);
                    size_t n = strnlen(s, nfb_attr_len(b));
                    int64_t off = sink ? sink(ctx, s, n) : s - p;
                    if (off >= 0) {
                        r->secctx_off = (uint32_t)off;
                        r->secctx_len = (uint32_t)n;
                        attrs |= NFB_CT_A_SECCTX;
                    }
                }
            }
            break;
        }
    }
    r->attrs = attrs;
}

/* Parse the CTA_* attributes at p[0..len) (an NFQA_CT / NFULA_CT payload, or
 * a ctnetlink answer's attributes) into one record; secctx_off is relative
 * to p. */
NFB_API void nfb_ct_parse_attrs(const char *p, uint32_t len, uint8_t family,
                                struct nfb_ct_rec *r)
{
    nfb_ct_parse(p, len, family, r, NULL, NULL);
}

/* ---- conntrack by packet, over ctnetlink ----------------------------------------
 *
 * Used by NFQUEUE and NFLOG when the kernel is built without
 * CONFIG_NETFILTER_NETLINK_GLUE_CT and so can neither attach conntrack
 * information to queued packets nor apply NFQA_CT in a verdict. */

/* Put CTA_TUPLE_ORIG for the connection of the L3 packet p[0..len). */
static int nfb_put_pkt_tuple(struct nlmsghdr *nlh, const unsigned char *p,
                             uint32_t len, uint8_t *family)
{
    struct nlattr *tuple, *ip, *proto;
    const unsigned char *l4;
    uint32_t l4len;
    uint8_t l4proto;

    if (len < 1)
        return -EINVAL;
    tuple = mnl_attr_nest_start(nlh, CTA_TUPLE_ORIG);
    ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
    if ((p[0] >> 4) == 4) {
        const struct iphdr *h = (const void *)p;
        uint32_t hl;
        if (len < sizeof(*h))
            return -EINVAL;
        hl = h->ihl * 4u;
        if (hl < sizeof(*h) || hl > len)
            return -EINVAL;
        if (ntohs(h->frag_off) & 0x1FFF)   /* a later fragment has no L4 header */
            return -EPROTONOSUPPORT;
        mnl_attr_put_u32(nlh, CTA_IP_V4_SRC, h->saddr);
        mnl_attr_put_u32(nlh, CTA_IP_V4_DST, h->daddr);
        *family = AF_INET;
        l4proto = h->protocol;
        l4 = p + hl;
        l4len = len - hl;
    } else if ((p[0] >> 4) == 6) {
        const struct ipv6hdr *h = (const void *)p;
        if (len < sizeof(*h))
            return -EINVAL;
        mnl_attr_put(nlh, CTA_IP_V6_SRC, 16, &h->saddr);
        mnl_attr_put(nlh, CTA_IP_V6_DST, 16, &h->daddr);
        *family = AF_INET6;
        l4proto = h->nexthdr;    /* extension headers are not walked */
        l4 = p + sizeof(*h);
        l4len = len - sizeof(*h);
    } else {
        return -EPROTONOSUPPORT;
    }
    mnl_attr_nest_end(nlh, ip);
    proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
    mnl_attr_put_u8(nlh, CTA_PROTO_NUM, l4proto);
    if (l4proto == IPPROTO_GRE) {
        /* the kernel's keys: PPTP (GRE version 1) has the call id as the
         * destination key and the source key from the PPTP helper's keymap,
         * which only the kernel knows (0 without it); other GRE has 0 and 0 */
        uint16_t sk = 0, dk = 0;
        if (l4len < 4)
            return -EINVAL;
        if ((l4[1] & 0x07) == 1) {
            if (l4len < 8)
                return -EINVAL;
            memcpy(&dk, l4 + 6, 2);
        }
        mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, sk);
        mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, dk);
    } else if (nfb_proto_has_ports(l4proto)) {
        uint16_t sp, dp;
        if (l4len < 4)
            return -EINVAL;
        memcpy(&sp, l4, 2);
        memcpy(&dp, l4 + 2, 2);
        mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, sp);
        mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, dp);
    } else if (l4proto == IPPROTO_ICMP || l4proto == IPPROTO_ICMPV6) {
        uint16_t id;
        int v6 = l4proto == IPPROTO_ICMPV6;
        if (l4len < 8)
            return -EINVAL;
        memcpy(&id, l4 + 4, 2);
        mnl_attr_put_u16(nlh, v6 ? CTA_PROTO_ICMPV6_ID : CTA_PROTO_ICMP_ID, id);
        mnl_attr_put_u8(nlh, v6 ? CTA_PROTO_ICMPV6_TYPE : CTA_PROTO_ICMP_TYPE, l4[0]);
        mnl_attr_put_u8(nlh, v6 ? CTA_PROTO_ICMPV6_CODE : CTA_PROTO_ICMP_CODE, l4[1]);
    }
    mnl_attr_nest_end(nlh, proto);
    mnl_attr_nest_end(nlh, tuple);
    return 0;
}

struct nfb_ct_copy {
    char *out;
    uint32_t cap;
    uint32_t *len;
    int got;
};

/* A GET's answer: the flow's attributes, after the nfgenmsg header. */
static int nfb_ct_copy_answer(void *ctx, const struct nlmsghdr *h, int i)
{
    struct nfb_ct_copy *c = ctx;
    (void)i;
    if (c->out && h->nlmsg_len > NLMSG_HDRLEN + sizeof(struct nfgenmsg)) {
        uint32_t l = h->nlmsg_len - NLMSG_HDRLEN - sizeof(struct nfgenmsg);
        if (l > c->cap)
            l = c->cap;
        memcpy(c->out, (const char *)mnl_nlmsg_get_payload(h) + sizeof(struct nfgenmsg), l);
        if (c->len)
            *c->len = l;
        c->got = 1;
    }
    return 0;
}

/* Look up (set_mark == 0) or re-mark (set_mark != 0) the connection of an L3
 * packet; fd is a NETLINK_NETFILTER socket.  On a lookup the conntrack
 * attributes (the payload after the nfgenmsg header) are copied to
 * out[0..*out_len).  Returns 0 or -errno (-ENOENT: the kernel has no such
 * connection, e.g. not yet confirmed). */
/* What nfb_ct_set_by_packet() changes. */
enum {
    NFB_CTSET_MARK = 1,
    NFB_CTSET_LABELS = 2,
};

static int nfb_ct_packet_request(int fd, const char *pkt, uint32_t len, uint16_t zone,
                                 int set, uint32_t mark, const char *labels, char *out,
                                 uint32_t out_cap, uint32_t *out_len);

NFB_API int nfb_ct_by_packet(int fd, const char *pkt, uint32_t len, uint16_t zone,
                             int set_mark, uint32_t mark, char *out, uint32_t out_cap,
                             uint32_t *out_len)
{
    return nfb_ct_packet_request(fd, pkt, len, zone, set_mark ? NFB_CTSET_MARK : 0, mark,
                                 NULL, out, out_cap, out_len);
}

/* Change the connection of an L3 packet: its mark (NFB_CTSET_MARK) and/or
 * its labels (NFB_CTSET_LABELS: labels holds 16 bytes of labels then 16 of
 * mask, host-order u32 words).  Returns 0 or -errno (-ENOENT: no such
 * connection; -ENOSPC: labels without the connlabel extension). */
NFB_API int nfb_ct_set_by_packet(int fd, const char *pkt, uint32_t len, uint16_t zone,
                                 int set, uint32_t mark, const char *labels)
{
    if (!set || ((set & NFB_CTSET_LABELS) && !labels))
        return -EINVAL;
    return nfb_ct_packet_request(fd, pkt, len, zone, set, mark, labels, NULL, 0, NULL);
}

/* A lookup (set == 0: the answer's attributes to out) or a change. */
static int nfb_ct_packet_request(int fd, const char *pkt, uint32_t len, uint16_t zone,
                                 int set, uint32_t mark, const char *labels, char *out,
                                 uint32_t out_cap, uint32_t *out_len)
{
    int set_mark = set != 0;    /* a change (IPCTNL_MSG_CT_NEW), not a lookup */
    char buf[1024];
    struct nlmsghdr *nlh;
    struct nfgenmsg *nfg;
    struct nfb_rx rx;
    struct nfb_txn t;
    struct nfb_ct_copy copy = { set_mark ? NULL : out, out_cap, out_len, 0 };
    uint8_t family = AF_UNSPEC;
    static uint32_t seq_counter;
    uint32_t seq;
    int rc, result;

    if (out_len)
        *out_len = 0;
    memset(buf, 0, sizeof(buf));
    nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) |
                      (set_mark ? IPCTNL_MSG_CT_NEW : IPCTNL_MSG_CT_GET);
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    seq = __atomic_add_fetch(&seq_counter, 1, __ATOMIC_RELAXED) + (uint32_t)time(NULL);
    nlh->nlmsg_seq = seq;
    nfg = mnl_nlmsg_put_extra_header(nlh, sizeof(*nfg));
    nfg->version = NFNETLINK_V0;
    rc = nfb_put_pkt_tuple(nlh, (const unsigned char *)pkt, len, &family);
    if (rc < 0)
        return rc;
    nfg->nfgen_family = family;
    if (zone)
        mnl_attr_put_u16(nlh, CTA_ZONE, htons(zone));
    if (set & NFB_CTSET_MARK)
        mnl_attr_put_u32(nlh, CTA_MARK, htonl(mark));
    if (set & NFB_CTSET_LABELS) {
        mnl_attr_put(nlh, CTA_LABELS, 16, labels);
        mnl_attr_put(nlh, CTA_LABELS_MASK, 16, labels + 16);
    }
    if (nfb_rx_init(&rx, fd, 65536, 1) < 0)
        return -ENOMEM;
    nfb_txn_init(&t, 1, &seq, &result);
    t.overrun_ends = 1;
    t.on_data = nfb_ct_copy_answer;
    t.ctx = &copy;
    rc = nfb_rx_transact(&rx, &t, buf, nlh->nlmsg_len, 1000);
    nfb_rx_release(&rx);
    if (rc < 0)
        return rc;
    if (result == 0 && !set_mark && !copy.got)
        return -ENOENT;
    return result;
}

/* ---- checksums --------------------------------------------------------------------- */

static uint32_t nfb_sum16(const uint8_t *p, uint32_t len, uint32_t sum)
{
    while (len > 1) {
        sum += ((uint32_t)p[0] << 8) | p[1];
        p += 2;
        len -= 2;
    }
    if (len)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

/* Complete the TCP or UDP checksum of an IPv4/IPv6 packet in place.
 * Returns 1 when written, 0 when the packet is not an unfragmented TCP/UDP
 * packet that fits in buf. */
NFB_API int nfb_l4_csum_fill(char *buf, uint32_t len)
{
    uint8_t *p = (uint8_t *)buf;
    uint32_t l4off, l4len, sum = 0;
    uint8_t proto;
    uint32_t check_at;

    if (len < 1)
        return 0;
    if ((p[0] >> 4) == 4) {
        uint32_t ihl, tot;
        if (len < 20)
            return 0;
        ihl = (uint32_t)(p[0] & 0x0f) * 4;
        tot = ((uint32_t)p[2] << 8) | p[3];
        /* a fragment (MF set or an offset) carries no whole L4 segment */
        if (ihl < 20 || tot < ihl || tot > len || (((p[6] << 8) | p[7]) & 0x3fff))
            return 0;
        proto = p[9];
        l4off = ihl;
        l4len = tot - ihl;
        sum = nfb_sum16(p + 12, 8, 0);              /* source and destination */
    } else if ((p[0] >> 4) == 6) {
        uint32_t plen;
        if (len < 40)
            return 0;
        plen = ((uint32_t)p[4] << 8) | p[5];
        if (40 + plen > len)
            return 0;
        proto = p[6];
        l4off = 40;
        /* hop-by-hop, routing and destination options may precede L4 */
        while (proto == 0 || proto == 43 || proto == 60) {
            uint32_t hl;
            if (l4off + 8 > 40 + plen)
                return 0;
            hl = ((uint32_t)p[l4off + 1] + 1) * 8;
            proto = p[l4off];
            l4off += hl;
        }
        if (l4off > 40 + plen)
            return 0;
        l4len = 40 + plen - l4off;
        sum = nfb_sum16(p + 8, 32, 0);
    } else {
        return 0;
    }
    if (proto == IPPROTO_TCP) {
        if (l4len < 20)
            return 0;
        check_at = l4off + 16;
    } else if (proto == IPPROTO_UDP) {
        if (l4len < 8)
            return 0;
        check_at = l4off + 6;
    } else {
        return 0;
    }
    sum += proto;
    sum += l4len;
    p[check_at] = 0;
    p[check_at + 1] = 0;
    sum = nfb_sum16(p + l4off, l4len, sum);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    sum = ~sum & 0xffff;
    if (sum == 0 && proto == IPPROTO_UDP)
        sum = 0xffff;                               /* UDP: 0 means "no checksum" */
    p[check_at] = (uint8_t)(sum >> 8);
    p[check_at + 1] = (uint8_t)sum;
    return 1;
}

/* ---- privileges: nfbind.drop_privileges ------------------------------------- */

NFB_API long nfb_prctl(int option, unsigned long arg2, unsigned long arg3,
                       unsigned long arg4, unsigned long arg5)
{
    int rc = prctl(option, arg2, arg3, arg4, arg5);
    return rc < 0 ? -errno : rc;
}

NFB_API int nfb_capget(uint64_t *effective, uint64_t *permitted, uint64_t *inheritable)
{
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

    memset(data, 0, sizeof(data));
    if (syscall(SYS_capget, &hdr, data) < 0)
        return -errno;
    *effective = (uint64_t)data[1].effective << 32 | data[0].effective;
    *permitted = (uint64_t)data[1].permitted << 32 | data[0].permitted;
    *inheritable = (uint64_t)data[1].inheritable << 32 | data[0].inheritable;
    return 0;
}

NFB_API int nfb_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable)
{
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    int i;

    for (i = 0; i < _LINUX_CAPABILITY_U32S_3; i++) {
        data[i].effective = (uint32_t)(effective >> (32 * i));
        data[i].permitted = (uint32_t)(permitted >> (32 * i));
        data[i].inheritable = (uint32_t)(inheritable >> (32 * i));
    }
    if (syscall(SYS_capset, &hdr, data) < 0)
        return -errno;
    return 0;
}
#endif
