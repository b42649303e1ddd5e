/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind's C helper for conntrack (declared for Python in cdef/conntrack.h).
 *
 * Requests are built with libnetfilter_conntrack objects and
 * nfct_nlmsg_build()/nfexp_nlmsg_build()/nfct_nlmsg_build_filter(): only the
 * attributes set on the object are sent, so an update carries the tuple, the
 * zone and what changes, nothing else.
 *
 * Answers and events are parsed here against the kernel's CTA_* enum into
 * struct nfb_ct_rec records, many per call, so Python pays one call per
 * batch instead of one per attribute.
 */
#include "common_src.h"
#include <poll.h>
#include <endian.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <linux/netfilter/nf_conntrack_sctp.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>

/* ---- records --------------------------------------------------------------- */

struct nfb_ct_tuple {
    uint8_t src[16];
    uint8_t dst[16];
    uint16_t sport;
    uint16_t dport;
    uint16_t icmp_id;
    uint16_t zone;
    uint8_t icmp_type;
    uint8_t icmp_code;
    uint8_t proto;
    uint8_t has;
};

enum {
    NFB_T_ADDR = 1u << 0,
    NFB_T_PROTO = 1u << 1,
    NFB_T_PORTS = 1u << 2,
    NFB_T_ICMP = 1u << 3,
    NFB_T_ZONE = 1u << 4,
    NFB_T_V6 = 1u << 5,
};

struct nfb_ct_rec {
    uint64_t o_packets;
    uint64_t o_bytes;
    uint64_t r_packets;
    uint64_t r_bytes;
    uint64_t ts_start;
    uint64_t ts_stop;
    struct nfb_ct_tuple orig;
    struct nfb_ct_tuple reply;
    struct nfb_ct_tuple master;
    uint32_t attrs;
    uint32_t status;
    uint32_t timeout;
    uint32_t mark;
    uint32_t secmark;
    uint32_t use;
    uint32_t id;
    uint32_t secctx_off;
    uint32_t secctx_len;
    uint16_t zone;
    uint8_t family;
    uint8_t state;
    uint8_t event;
    uint8_t labels[16];
    char helper[16];
};

enum {
    NFB_CT_A_ORIG = 1u << 0,
    NFB_CT_A_REPLY = 1u << 1,
    NFB_CT_A_STATUS = 1u << 2,
    NFB_CT_A_TIMEOUT = 1u << 3,
    NFB_CT_A_MARK = 1u << 4,
    NFB_CT_A_SECMARK = 1u << 5,
    NFB_CT_A_USE = 1u << 6,
    NFB_CT_A_ID = 1u << 7,
    NFB_CT_A_ZONE = 1u << 8,
    NFB_CT_A_STATE = 1u << 9,
    NFB_CT_A_COUNTERS = 1u << 10,
    NFB_CT_A_TS_START = 1u << 11,
    NFB_CT_A_TS_STOP = 1u << 12,
    NFB_CT_A_LABELS = 1u << 13,
    NFB_CT_A_HELPER = 1u << 14,
    NFB_CT_A_SECCTX = 1u << 15,
    NFB_CT_A_MASTER = 1u << 16,
};

struct nfb_ct_spec {
    uint32_t set;
    uint8_t family;
    uint8_t state;
    uint16_t zone;
    struct nfb_ct_tuple orig;
    struct nfb_ct_tuple reply;
    uint32_t status;
    uint32_t timeout;
    uint32_t mark;
    uint32_t id;
    uint8_t labels[16];
    uint8_t labels_mask[16];
    char helper[16];
    uint8_t snat_addr[16];
    uint8_t dnat_addr[16];
    uint16_t snat_port;
    uint16_t dnat_port;
};

enum {
    NFB_S_ORIG = 1u << 0,
    NFB_S_REPLY = 1u << 1,
    NFB_S_STATUS = 1u << 2,
    NFB_S_TIMEOUT = 1u << 3,
    NFB_S_MARK = 1u << 4,
    NFB_S_ZONE = 1u << 5,
    NFB_S_LABELS = 1u << 6,
    NFB_S_LABELS_MASK = 1u << 7,
    NFB_S_HELPER = 1u << 8,
    NFB_S_STATE = 1u << 9,
    NFB_S_ID = 1u << 10,
    NFB_S_SNAT = 1u << 11,
    NFB_S_DNAT = 1u << 12,
    NFB_S_SNAT_PORT = 1u << 13,
    NFB_S_DNAT_PORT = 1u << 14,
    NFB_S_SETUP_REPLY = 1u << 15,
};

struct nfb_exp_spec {
    uint32_t set;
    uint8_t family;
    uint16_t zone;
    struct nfb_ct_tuple master;
    struct nfb_ct_tuple expected;
    struct nfb_ct_tuple mask;
    uint32_t timeout;
    uint32_t flags;
    uint32_t klass;
    char helper[16];
};

enum {
    NFB_ES_MASTER = 1u << 0,
    NFB_ES_EXPECTED = 1u << 1,
    NFB_ES_MASK = 1u << 2,
    NFB_ES_TIMEOUT = 1u << 3,
    NFB_ES_ZONE = 1u << 4,
    NFB_ES_FLAGS = 1u << 5,
    NFB_ES_CLASS = 1u << 6,
    NFB_ES_HELPER = 1u << 7,
};

struct nfb_ct_dumpf {
    uint32_t set;
    uint8_t family;
    uint32_t mark;
    uint32_t mark_mask;
    uint32_t status;
    uint32_t status_mask;
};

enum {
    NFB_DF_MARK = 1u << 0,
    NFB_DF_STATUS = 1u << 1,
};

enum { NFB_M_RECORDS = 0, NFB_M_RAW = 1 };

/* A request fits easily: a flow with both tuples, labels and NAT is < 512. */
#define NFB_CT_BUFSIZE 8192
/* One datagram of a dump: the kernel fills at most 32 KiB per skb. */
#define NFB_CT_RBUF (64 * 1024)
#define NFB_CT_SLOT 8192

struct nfb_ct {
    int fd;
    uint32_t seq;
    int done;
    int error;
    char errmsg[128];
    struct nfb_ct_rec *recs;
    int nrecs;
    int nv6;
    char *data;
    size_t data_len;
    uint32_t *moffs;
    int nmsgs;
    uint64_t overruns;
    uint64_t recv_calls;
    uint64_t messages;
    uint64_t truncated;
    uint64_t ignored;
    /* private */
    int recs_cap;
    int moffs_cap;
    size_t data_cap;
    char *rbuf;
    int nslots;
    struct mmsghdr *mm;
    struct iovec *iov;
    char *slots;
};

struct nfb_ct *nfb_ct_new(int fd, int nslots)
{
    struct nfb_ct *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->fd = fd;
    c->seq = (uint32_t)time(NULL) << 8;
    c->rbuf = malloc(NFB_CT_RBUF);
    c->recs_cap = 256;
    c->recs = malloc(sizeof(*c->recs) * c->recs_cap);
    c->moffs_cap = 64;
    c->moffs = malloc(sizeof(*c->moffs) * c->moffs_cap);
    c->data_cap = 64 * 1024;
    c->data = malloc(c->data_cap);
    if (nslots > 0) {
        c->nslots = nslots;
        c->mm = calloc(nslots, sizeof(*c->mm));
        c->iov = calloc(nslots, sizeof(*c->iov));
        c->slots = malloc((size_t)nslots * NFB_CT_SLOT);
    }
    if (!c->rbuf || !c->recs || !c->moffs || !c->data ||
        (nslots > 0 && (!c->mm || !c->iov || !c->slots))) {
        free(c->rbuf);
        free(c->recs);
        free(c->moffs);
        free(c->data);
        free(c->mm);
        free(c->iov);
        free(c->slots);
        free(c);
        return NULL;
    }
    return c;
}

void nfb_ct_free(struct nfb_ct *c)
{
    if (!c)
        return;
    free(c->rbuf);
    free(c->recs);
    free(c->moffs);
    free(c->data);
    free(c->mm);
    free(c->iov);
    free(c->slots);
    free(c);
}

static struct nfb_ct_rec *nfb_next_rec(struct nfb_ct *c)
{
    if (c->nrecs >= c->recs_cap) {
        int cap = c->recs_cap * 2;
        struct nfb_ct_rec *r = realloc(c->recs, sizeof(*r) * cap);
        if (!r)
            return NULL;
        c->recs = r;
        c->recs_cap = cap;
    }
    return &c->recs[c->nrecs++];
}

/* Append len bytes to the batch data; returns their offset or -1. */
static int64_t nfb_append(struct nfb_ct *c, const void *p, size_t len)
{
    size_t need = c->data_len + ((len + 3) & ~(size_t)3);
    size_t off = c->data_len;
    if (need > c->data_cap) {
        size_t cap = c->data_cap;
        char *d;
        while (cap < need)
            cap *= 2;
        d = realloc(c->data, cap);
        if (!d)
            return -1;
        c->data = d;
        c->data_cap = cap;
    }
    memcpy(c->data + off, p, len);
    c->data_len = need;
    return (int64_t)off;
}

/* ---- parsing ----------------------------------------------------------------- */

#define NFB_FOR_EACH(a, p, len) \
    for ((a) = (const struct nlattr *)(p); \
         mnl_attr_ok((a), (int)((const char *)(p) + (len) - (const char *)(a))); \
         (a) = mnl_attr_next(a))

static uint16_t nfb_u16(const struct nlattr *a)
{
    uint16_t v;
    memcpy(&v, mnl_attr_get_payload(a), 2);
    return ntohs(v);
}

static uint32_t nfb_u32(const struct nlattr *a)
{
    uint32_t v;
    memcpy(&v, mnl_attr_get_payload(a), 4);
    return ntohl(v);
}

static uint64_t nfb_u64(const struct nlattr *a)
{
    uint64_t v;
    memcpy(&v, mnl_attr_get_payload(a), 8);
    return be64toh(v);
}

static void nfb_parse_tuple(const struct nlattr *nest, struct nfb_ct_tuple *t)
{
    const struct nlattr *a, *b;
    NFB_FOR_EACH(a, mnl_attr_get_payload(nest), mnl_attr_get_payload_len(nest)) {
        uint16_t len = mnl_attr_get_payload_len(a);
        switch (mnl_attr_get_type(a)) {
        case CTA_TUPLE_IP:
            NFB_FOR_EACH(b, mnl_attr_get_payload(a), len) {
                uint16_t bl = mnl_attr_get_payload_len(b);
                switch (mnl_attr_get_type(b)) {
                case CTA_IP_V4_SRC:
                case CTA_IP_V6_SRC:
                    if (bl == 4 || bl == 16) {
                        memcpy(t->src, mnl_attr_get_payload(b), bl);
                        t->has |= NFB_T_ADDR | (bl == 16 ? NFB_T_V6 : 0);
                    }
                    break;
                case CTA_IP_V4_DST:
                case CTA_IP_V6_DST:
                    if (bl == 4 || bl == 16) {
                        memcpy(t->dst, mnl_attr_get_payload(b), bl);
                        t->has |= NFB_T_ADDR | (bl == 16 ? NFB_T_V6 : 0);
                    }
                    break;
                }
            }
            break;
        case CTA_TUPLE_PROTO:
            NFB_FOR_EACH(b, mnl_attr_get_payload(a), len) {
                uint16_t bl = mnl_attr_get_payload_len(b);
                switch (mnl_attr_get_type(b)) {
                case CTA_PROTO_NUM:
                    if (bl >= 1) {
                        t->proto = *(const uint8_t *)mnl_attr_get_payload(b);
                        t->has |= NFB_T_PROTO;
                    }
                    break;
                case CTA_PROTO_SRC_PORT:
                    if (bl >= 2) {
                        t->sport = nfb_u16(b);
                        t->has |= NFB_T_PORTS;
                    }
                    break;
                case CTA_PROTO_DST_PORT:
                    if (bl >= 2) {
                        t->dport = nfb_u16(b);
                        t->has |= NFB_T_PORTS;
                    }
                    break;
                case CTA_PROTO_ICMP_ID:
                case CTA_PROTO_ICMPV6_ID:
                    if (bl >= 2) {
                        t->icmp_id = nfb_u16(b);
                        t->has |= NFB_T_ICMP;
                    }
                    break;
                case CTA_PROTO_ICMP_TYPE:
                case CTA_PROTO_ICMPV6_TYPE:
                    if (bl >= 1) {
                        t->icmp_type = *(const uint8_t *)mnl_attr_get_payload(b);
                        t->has |= NFB_T_ICMP;
                    }
                    break;
                case CTA_PROTO_ICMP_CODE:
                case CTA_PROTO_ICMPV6_CODE:
                    if (bl >= 1) {
                        t->icmp_code = *(const uint8_t *)mnl_attr_get_payload(b);
                        t->has |= NFB_T_ICMP;
                    }
                    break;
                }
            }
            break;
        case CTA_TUPLE_ZONE:
            if (len >= 2) {
                t->zone = nfb_u16(a);
                t->has |= NFB_T_ZONE;
            }
            break;
        }
    }
}

static uint32_t nfb_parse_counters(const struct nlattr *nest, uint64_t *pk, uint64_t *by)
{
    const struct nlattr *a;
    uint32_t got = 0;
    NFB_FOR_EACH(a, mnl_attr_get_payload(nest), mnl_attr_get_payload_len(nest)) {
        uint16_t len = mnl_attr_get_payload_len(a);
        switch (mnl_attr_get_type(a)) {
        case CTA_COUNTERS_PACKETS:
            if (len >= 8) {
                *pk = nfb_u64(a);
                got = 1;
            }
            break;
        case CTA_COUNTERS_BYTES:
            if (len >= 8) {
                *by = nfb_u64(a);
                got = 1;
            }
            break;
        case CTA_COUNTERS32_PACKETS:
            if (len >= 4) {
                *pk = nfb_u32(a);
                got = 1;
            }
            break;
        case CTA_COUNTERS32_BYTES:
            if (len >= 4) {
                *by = nfb_u32(a);
                got = 1;
            }
            break;
        }
    }
    return got ? NFB_CT_A_COUNTERS : 0;
}

/* CTA_* attributes that carry one be32: where it goes in the record, and its
 * presence bit (0: not such an attribute). */
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

/* Parse the CTA_* attributes at p[0..len) into r.  When c is given, a
 * security context string is appended to its batch data; otherwise its
 * offset is taken relative to p. */
static void nfb_parse_ct(struct nfb_ct *c, const char *p, size_t len, uint8_t family,
                         struct nfb_ct_rec *r)
{
    const struct nlattr *a, *b;
    uint32_t attrs = 0;

    memset(r, 0, sizeof(*r));
    r->family = family;
    NFB_FOR_EACH(a, p, len) {
        uint16_t al = mnl_attr_get_payload_len(a);
        uint16_t type = mnl_attr_get_type(a);
        if (type <= CTA_MAX && nfb_ct_u32_bit[type]) {
            if (al >= 4) {
                uint32_t v = nfb_u32(a);
                memcpy((char *)r + nfb_ct_u32_off[type], &v, sizeof(v));
                attrs |= nfb_ct_u32_bit[type];
            }
            continue;
        }
        switch (type) {
        case CTA_TUPLE_ORIG:
            nfb_parse_tuple(a, &r->orig);
            attrs |= NFB_CT_A_ORIG;
            break;
        case CTA_TUPLE_REPLY:
            nfb_parse_tuple(a, &r->reply);
            attrs |= NFB_CT_A_REPLY;
            break;
        case CTA_TUPLE_MASTER:
            nfb_parse_tuple(a, &r->master);
            attrs |= NFB_CT_A_MASTER;
            break;
        case CTA_ZONE:
            if (al >= 2) {
                r->zone = nfb_u16(a);
                attrs |= NFB_CT_A_ZONE;
            }
            break;
        case CTA_PROTOINFO:
            NFB_FOR_EACH(b, mnl_attr_get_payload(a), al) {
                const struct nlattr *s;
                int want;
                switch (mnl_attr_get_type(b)) {
                case CTA_PROTOINFO_TCP: want = CTA_PROTOINFO_TCP_STATE; break;
                case CTA_PROTOINFO_SCTP: want = CTA_PROTOINFO_SCTP_STATE; break;
                case CTA_PROTOINFO_DCCP: want = CTA_PROTOINFO_DCCP_STATE; break;
                default: continue;
                }
                NFB_FOR_EACH(s, mnl_attr_get_payload(b), mnl_attr_get_payload_len(b)) {
                    if (mnl_attr_get_type(s) == want && mnl_attr_get_payload_len(s) >= 1) {
                        r->state = *(const uint8_t *)mnl_attr_get_payload(s);
                        attrs |= NFB_CT_A_STATE;
                    }
                }
            }
            break;
        case CTA_COUNTERS_ORIG:
            attrs |= nfb_parse_counters(a, &r->o_packets, &r->o_bytes);
            break;
        case CTA_COUNTERS_REPLY:
            attrs |= nfb_parse_counters(a, &r->r_packets, &r->r_bytes);
            break;
        case CTA_TIMESTAMP:
            NFB_FOR_EACH(b, mnl_attr_get_payload(a), al) {
                if (mnl_attr_get_payload_len(b) < 8)
                    continue;
                if (mnl_attr_get_type(b) == CTA_TIMESTAMP_START) {
                    r->ts_start = nfb_u64(b);
                    attrs |= NFB_CT_A_TS_START;
                } else if (mnl_attr_get_type(b) == CTA_TIMESTAMP_STOP) {
                    r->ts_stop = nfb_u64(b);
                    attrs |= NFB_CT_A_TS_STOP;
                }
            }
            break;
        case CTA_LABELS:
            memcpy(r->labels, mnl_attr_get_payload(a), al < 16 ? al : 16);
            attrs |= NFB_CT_A_LABELS;
            break;
        case CTA_HELP:
            NFB_FOR_EACH(b, mnl_attr_get_payload(a), al) {
                if (mnl_attr_get_type(b) == CTA_HELP_NAME) {
                    size_t n = strnlen(mnl_attr_get_payload(b), mnl_attr_get_payload_len(b));
                    if (n > sizeof(r->helper) - 1)
                        n = sizeof(r->helper) - 1;
                    memcpy(r->helper, mnl_attr_get_payload(b), n);
                    r->helper[n] = '\0';
                    attrs |= NFB_CT_A_HELPER;
                }
            }
            break;
        case CTA_SECCTX:
            NFB_FOR_EACH(b, mnl_attr_get_payload(a), al) {
                if (mnl_attr_get_type(b) == CTA_SECCTX_NAME) {
                    size_t n = strnlen(mnl_attr_get_payload(b), mnl_attr_get_payload_len(b));
                    int64_t off = c ? nfb_append(c, mnl_attr_get_payload(b), n)
                                    : (const char *)mnl_attr_get_payload(b) - p;
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

void nfb_ct_parse_attrs(const char *p, uint32_t len, uint8_t family, struct nfb_ct_rec *r)
{
    nfb_parse_ct(NULL, p, len, family, r);
}

int nfb_ct_payload_check(const char *p, uint32_t len, uint8_t family, uint32_t *mark,
                         uint32_t *id, uint32_t *status)
{
    struct nf_conntrack *ct = nfct_new();
    int rc;
    if (!ct)
        return -ENOMEM;
    rc = nfct_payload_parse(p, len, family, ct);
    if (rc < 0) {
        rc = -(errno ? errno : EINVAL);
    } else {
        *mark = nfct_get_attr_u32(ct, ATTR_MARK);
        *id = nfct_get_attr_u32(ct, ATTR_ID);
        *status = nfct_get_attr_u32(ct, ATTR_STATUS);
        rc = 0;
    }
    nfct_destroy(ct);
    return rc;
}

/* ---- building requests --------------------------------------------------------- */

static struct nlmsghdr *nfb_put_header(char *buf, uint8_t subsys, uint8_t msg, uint16_t flags)
{
    struct nlmsghdr *nlh;
    memset(buf, 0, NFB_CT_BUFSIZE);
    nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = (uint16_t)((subsys << 8) | msg);
    nlh->nlmsg_flags = NLM_F_REQUEST | flags;
    return nlh;
}

static struct nfgenmsg *nfb_put_nfgen(struct nlmsghdr *nlh, uint8_t family, uint16_t res_id)
{
    struct nfgenmsg *nfg = mnl_nlmsg_put_extra_header(nlh, sizeof(*nfg));
    nfg->nfgen_family = family;
    nfg->version = NFNETLINK_V0;
    nfg->res_id = htons(res_id);
    return nfg;
}

int nfb_ct_build_simple(char *buf, uint8_t subsys, uint8_t msg, uint16_t flags,
                        uint8_t family, uint16_t res_id)
{
    struct nlmsghdr *nlh = nfb_put_header(buf, subsys, msg, flags);
    nfb_put_nfgen(nlh, family, res_id);
    return (int)nlh->nlmsg_len;
}

int nfb_ct_build_filtered(char *buf, uint8_t msg, uint16_t flags, const struct nfb_ct_dumpf *f)
{
    struct nlmsghdr *nlh = nfb_put_header(buf, NFNL_SUBSYS_CTNETLINK, msg, flags);
    struct nfgenmsg *nfg;
    struct nfct_filter_dump *fd;
    int rc = 0;

    nfg = nfb_put_nfgen(nlh, f->family, 0);
    /* the kernel filters a flush by family only for version 1 (as
     * libnetfilter_conntrack's NFCT_Q_FLUSH_FILTER sends it) */
    if (msg == IPCTNL_MSG_CT_DELETE)
        nfg->version = 1;
    if (!(f->set & (NFB_DF_MARK | NFB_DF_STATUS)) && !f->family)
        return (int)nlh->nlmsg_len;
    fd = nfct_filter_dump_create();
    if (!fd)
        return -ENOMEM;
    if (f->set & NFB_DF_MARK) {
        struct nfct_filter_dump_mark m = { .val = f->mark, .mask = f->mark_mask };
        nfct_filter_dump_set_attr(fd, NFCT_FILTER_DUMP_MARK, &m);
    }
    if (f->set & NFB_DF_STATUS) {
        struct nfct_filter_dump_mark s = { .val = f->status, .mask = f->status_mask };
        nfct_filter_dump_set_attr(fd, NFCT_FILTER_DUMP_STATUS, &s);
    }
    if (f->family)
        nfct_filter_dump_set_attr_u8(fd, NFCT_FILTER_DUMP_L3NUM, f->family);
    if (nfct_nlmsg_build_filter(nlh, fd) < 0)
        rc = -(errno ? errno : EINVAL);
    nfct_filter_dump_destroy(fd);
    return rc < 0 ? rc : (int)nlh->nlmsg_len;
}

static int nfb_ports_proto(uint8_t proto)
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

/* Set one tuple's attributes on ct: dir 0 original, 1 reply, 2 master. */
static void nfb_set_tuple(struct nf_conntrack *ct, int dir, uint8_t family,
                          const struct nfb_ct_tuple *t)
{
    static const enum nf_conntrack_attr v4[3][2] = {
        { ATTR_ORIG_IPV4_SRC, ATTR_ORIG_IPV4_DST },
        { ATTR_REPL_IPV4_SRC, ATTR_REPL_IPV4_DST },
        { ATTR_MASTER_IPV4_SRC, ATTR_MASTER_IPV4_DST },
    };
    static const enum nf_conntrack_attr v6[3][2] = {
        { ATTR_ORIG_IPV6_SRC, ATTR_ORIG_IPV6_DST },
        { ATTR_REPL_IPV6_SRC, ATTR_REPL_IPV6_DST },
        { ATTR_MASTER_IPV6_SRC, ATTR_MASTER_IPV6_DST },
    };
    static const enum nf_conntrack_attr ports[3][2] = {
        { ATTR_ORIG_PORT_SRC, ATTR_ORIG_PORT_DST },
        { ATTR_REPL_PORT_SRC, ATTR_REPL_PORT_DST },
        { ATTR_MASTER_PORT_SRC, ATTR_MASTER_PORT_DST },
    };
    static const enum nf_conntrack_attr l3[3] = {
        ATTR_ORIG_L3PROTO, ATTR_REPL_L3PROTO, ATTR_MASTER_L3PROTO };
    static const enum nf_conntrack_attr l4[3] = {
        ATTR_ORIG_L4PROTO, ATTR_REPL_L4PROTO, ATTR_MASTER_L4PROTO };

    nfct_set_attr_u8(ct, l3[dir], family);
    if (family == AF_INET) {
        uint32_t s, d;
        memcpy(&s, t->src, 4);
        memcpy(&d, t->dst, 4);
        nfct_set_attr_u32(ct, v4[dir][0], s);
        nfct_set_attr_u32(ct, v4[dir][1], d);
    } else {
        nfct_set_attr(ct, v6[dir][0], t->src);
        nfct_set_attr(ct, v6[dir][1], t->dst);
    }
    nfct_set_attr_u8(ct, l4[dir], t->proto);
    if (nfb_ports_proto(t->proto)) {
        nfct_set_attr_u16(ct, ports[dir][0], htons(t->sport));
        nfct_set_attr_u16(ct, ports[dir][1], htons(t->dport));
    } else if (dir == 0 && (t->proto == IPPROTO_ICMP || t->proto == IPPROTO_ICMPV6)) {
        /* the library derives the reply direction's type from these */
        nfct_set_attr_u8(ct, ATTR_ICMP_TYPE, t->icmp_type);
        nfct_set_attr_u8(ct, ATTR_ICMP_CODE, t->icmp_code);
        nfct_set_attr_u16(ct, ATTR_ICMP_ID, htons(t->icmp_id));
    }
    if (t->has & NFB_T_ZONE)
        nfct_set_attr_u16(ct, dir == 0 ? ATTR_ORIG_ZONE : ATTR_REPL_ZONE, t->zone);
}

static struct nfct_bitmask *nfb_bitmask(const uint8_t *bytes)
{
    struct nfct_bitmask *b = nfct_bitmask_new(127);
    unsigned int i;
    uint32_t w[4];
    if (!b)
        return NULL;
    memcpy(w, bytes, 16);
    for (i = 0; i < 128; i++)
        if (w[i / 32] & (1u << (i % 32)))
            nfct_bitmask_set_bit(b, i);
    return b;
}

int nfb_ct_build(char *buf, uint8_t msg, uint16_t flags, const struct nfb_ct_spec *s)
{
    struct nlmsghdr *nlh = nfb_put_header(buf, NFNL_SUBSYS_CTNETLINK, msg, flags);
    struct nf_conntrack *ct = nfct_new();
    int rc = 0;

    if (!ct)
        return -ENOMEM;
    nfct_set_attr_u8(ct, ATTR_L3PROTO, s->family);
    if (s->set & NFB_S_ORIG)
        nfb_set_tuple(ct, 0, s->family, &s->orig);
    if (s->set & NFB_S_REPLY)
        nfb_set_tuple(ct, 1, s->family, &s->reply);
    else if (s->set & NFB_S_SETUP_REPLY)
        nfct_setobjopt(ct, NFCT_SOPT_SETUP_REPLY);   /* the inverse of orig */
    if (s->set & NFB_S_ZONE)
        nfct_set_attr_u16(ct, ATTR_ZONE, s->zone);
    if (s->set & NFB_S_STATUS)
        nfct_set_attr_u32(ct, ATTR_STATUS, s->status);
    if (s->set & NFB_S_TIMEOUT)
        nfct_set_attr_u32(ct, ATTR_TIMEOUT, s->timeout);
    if (s->set & NFB_S_MARK)
        nfct_set_attr_u32(ct, ATTR_MARK, s->mark);
    if (s->set & NFB_S_STATE) {
        if (s->orig.proto == IPPROTO_TCP)
            nfct_set_attr_u8(ct, ATTR_TCP_STATE, s->state);
        else if (s->orig.proto == IPPROTO_SCTP) {
            /* the kernel wants both verification tags with a state */
            nfct_set_attr_u8(ct, ATTR_SCTP_STATE, s->state);
            nfct_set_attr_u32(ct, ATTR_SCTP_VTAG_ORIG, 0);
            nfct_set_attr_u32(ct, ATTR_SCTP_VTAG_REPL, 0);
        }
        else if (s->orig.proto == IPPROTO_DCCP)
            nfct_set_attr_u8(ct, ATTR_DCCP_STATE, s->state);
    }
    if (s->set & NFB_S_HELPER)
        nfct_set_attr(ct, ATTR_HELPER_NAME, s->helper);
    if (s->set & NFB_S_LABELS) {
        struct nfct_bitmask *b = nfb_bitmask(s->labels);
        if (!b) {
            rc = -ENOMEM;
            goto out;
        }
        nfct_set_attr(ct, ATTR_CONNLABELS, b);   /* ct owns it now */
    }
    if (s->set & NFB_S_LABELS_MASK) {
        struct nfct_bitmask *b = nfb_bitmask(s->labels_mask);
        if (!b) {
            rc = -ENOMEM;
            goto out;
        }
        nfct_set_attr(ct, ATTR_CONNLABELS_MASK, b);
    }
    if (s->set & NFB_S_SNAT) {
        if (s->family == AF_INET) {
            uint32_t a;
            memcpy(&a, s->snat_addr, 4);
            nfct_set_attr_u32(ct, ATTR_SNAT_IPV4, a);
        } else {
            nfct_set_attr(ct, ATTR_SNAT_IPV6, s->snat_addr);
        }
    }
    if (s->set & NFB_S_DNAT) {
        if (s->family == AF_INET) {
            uint32_t a;
            memcpy(&a, s->dnat_addr, 4);
            nfct_set_attr_u32(ct, ATTR_DNAT_IPV4, a);
        } else {
            nfct_set_attr(ct, ATTR_DNAT_IPV6, s->dnat_addr);
        }
    }
    if (s->set & NFB_S_SNAT_PORT)
        nfct_set_attr_u16(ct, ATTR_SNAT_PORT, htons(s->snat_port));
    if (s->set & NFB_S_DNAT_PORT)
        nfct_set_attr_u16(ct, ATTR_DNAT_PORT, htons(s->dnat_port));

    /* nfct_nlmsg_build() adds the attributes only: the header is ours */
    nfb_put_nfgen(nlh, s->family, 0);
    errno = 0;
    if (nfct_nlmsg_build(nlh, ct) < 0) {
        rc = -(errno ? errno : EINVAL);
        goto out;
    }
    /* libnetfilter_conntrack 1.0.9 does not send ATTR_ID: add CTA_ID, so
     * that a delete removes only this instance of the tuple */
    if (s->set & NFB_S_ID)
        mnl_attr_put_u32(nlh, CTA_ID, htonl(s->id));
    rc = (int)nlh->nlmsg_len;
out:
    nfct_destroy(ct);
    return rc;
}

static struct nf_conntrack *nfb_tuple_ct(uint8_t family, const struct nfb_ct_tuple *t)
{
    struct nf_conntrack *ct = nfct_new();
    if (!ct)
        return NULL;
    nfct_set_attr_u8(ct, ATTR_L3PROTO, family);
    nfb_set_tuple(ct, 0, family, t);
    return ct;
}

int nfb_exp_build(char *buf, uint8_t msg, uint16_t flags, const struct nfb_exp_spec *s)
{
    struct nlmsghdr *nlh = nfb_put_header(buf, NFNL_SUBSYS_CTNETLINK_EXP, msg, flags);
    struct nf_expect *exp = nfexp_new();
    struct nf_conntrack *master = NULL, *expected = NULL, *mask = NULL;
    int rc;

    if (!exp)
        return -ENOMEM;
    rc = -ENOMEM;
    if (s->set & NFB_ES_MASTER) {
        if (!(master = nfb_tuple_ct(s->family, &s->master)))
            goto out;
        nfexp_set_attr(exp, ATTR_EXP_MASTER, master);
    }
    if (s->set & NFB_ES_EXPECTED) {
        if (!(expected = nfb_tuple_ct(s->family, &s->expected)))
            goto out;
        nfexp_set_attr(exp, ATTR_EXP_EXPECTED, expected);
    }
    if (s->set & NFB_ES_MASK) {
        if (!(mask = nfb_tuple_ct(s->family, &s->mask)))
            goto out;
        nfexp_set_attr(exp, ATTR_EXP_MASK, mask);
    }
    if (s->set & NFB_ES_TIMEOUT)
        nfexp_set_attr_u32(exp, ATTR_EXP_TIMEOUT, s->timeout);
    if (s->set & NFB_ES_ZONE)
        nfexp_set_attr_u16(exp, ATTR_EXP_ZONE, s->zone);
    if (s->set & NFB_ES_FLAGS)
        nfexp_set_attr_u32(exp, ATTR_EXP_FLAGS, s->flags);
    if (s->set & NFB_ES_CLASS)
        nfexp_set_attr_u32(exp, ATTR_EXP_CLASS, s->klass);
    if (s->set & NFB_ES_HELPER)
        nfexp_set_attr(exp, ATTR_EXP_HELPER_NAME, s->helper);
    nfb_put_nfgen(nlh, s->family, 0);
    errno = 0;
    if (nfexp_nlmsg_build(nlh, exp) < 0)
        rc = -(errno ? errno : EINVAL);
    else
        rc = (int)nlh->nlmsg_len;
out:
    /* nfexp_set_attr copied the tuples: the objects are still ours */
    nfexp_destroy(exp);
    if (master)
        nfct_destroy(master);
    if (expected)
        nfct_destroy(expected);
    if (mask)
        nfct_destroy(mask);
    return rc;
}

/* ---- talking to the kernel -------------------------------------------------------- */

int nfb_ct_send(struct nfb_ct *c, char *buf, uint32_t len)
{
    struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
    ssize_t r;

    c->seq++;
    if (c->seq == 0)
        c->seq = 1;
    nlh->nlmsg_seq = c->seq;
    c->done = 0;
    c->error = 0;
    c->errmsg[0] = '\0';
    do {
        r = send(c->fd, buf, len, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        c->done = 1;
        return -errno;
    }
    return 0;
}

/* Pick the extended-ack message (NLMSGERR_ATTR_MSG) out of an error. */
static void nfb_extack(struct nfb_ct *c, const struct nlmsghdr *h)
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
    NFB_FOR_EACH(a, (const char *)e + off, h->nlmsg_len - NLMSG_HDRLEN - off) {
        if (mnl_attr_get_type(a) == NLMSGERR_ATTR_MSG) {
            size_t n = strnlen(mnl_attr_get_payload(a), mnl_attr_get_payload_len(a));
            if (n >= sizeof(c->errmsg))
                n = sizeof(c->errmsg) - 1;
            memcpy(c->errmsg, mnl_attr_get_payload(a), n);
            c->errmsg[n] = '\0';
        }
    }
}

static int nfb_keep_raw(struct nfb_ct *c, const struct nlmsghdr *h)
{
    int64_t off;
    if (c->nmsgs >= c->moffs_cap) {
        int cap = c->moffs_cap * 2;
        uint32_t *m = realloc(c->moffs, sizeof(*m) * cap);
        if (!m)
            return -ENOMEM;
        c->moffs = m;
        c->moffs_cap = cap;
    }
    off = nfb_append(c, h, h->nlmsg_len);
    if (off < 0)
        return -ENOMEM;
    c->moffs[c->nmsgs++] = (uint32_t)off;
    return 0;
}

static uint8_t nfb_event_type(const struct nlmsghdr *h)
{
    uint8_t msg = h->nlmsg_type & 0xff;
    if (msg == IPCTNL_MSG_CT_DELETE)
        return NFCT_T_DESTROY;
    if (msg == IPCTNL_MSG_CT_NEW)
        return (h->nlmsg_flags & (NLM_F_CREATE | NLM_F_EXCL)) ? NFCT_T_NEW : NFCT_T_UPDATE;
    return NFCT_T_UNKNOWN;
}

/* Handle one ctnetlink message of an answer or an event stream. */
static int nfb_take(struct nfb_ct *c, const struct nlmsghdr *h, int mode, int event)
{
    const struct nfgenmsg *nfg;
    uint8_t subsys = h->nlmsg_type >> 8;
    uint8_t msg = h->nlmsg_type & 0xff;
    struct nfb_ct_rec *r;

    if (h->nlmsg_len < NLMSG_HDRLEN + sizeof(struct nfgenmsg)) {
        c->ignored++;
        return 0;
    }
    c->messages++;
    if (mode == NFB_M_RAW)
        return nfb_keep_raw(c, h);
    if (subsys != NFNL_SUBSYS_CTNETLINK ||
        (msg != IPCTNL_MSG_CT_NEW && msg != IPCTNL_MSG_CT_DELETE)) {
        c->ignored++;
        return 0;
    }
    nfg = mnl_nlmsg_get_payload(h);
    r = nfb_next_rec(c);
    if (!r)
        return -ENOMEM;
    nfb_parse_ct(c, (const char *)nfg + sizeof(*nfg),
                 h->nlmsg_len - NLMSG_HDRLEN - sizeof(*nfg), nfg->nfgen_family, r);
    if (nfg->nfgen_family == AF_INET6)
        c->nv6++;
    r->event = event ? nfb_event_type(h) : 0;
    return 0;
}

int nfb_ct_recv_answer(struct nfb_ct *c, int mode, int max_items, int timeout_ms)
{
    c->nrecs = 0;
    c->nv6 = 0;
    c->nmsgs = 0;
    c->data_len = 0;
    while (!c->done) {
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        const struct nlmsghdr *h;
        ssize_t n;
        int remaining, pr, items = mode == NFB_M_RAW ? c->nmsgs : c->nrecs;

        if (items >= max_items)
            break;
        pr = poll(&pfd, 1, timeout_ms);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return -errno;
        if (pr == 0)
            return -ETIMEDOUT;
        c->recv_calls++;
        n = recv(c->fd, c->rbuf, NFB_CT_RBUF, MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            if (errno == ENOBUFS) {
                c->overruns++;
                /* an answer was lost: it can't be completed */
                return -ENOBUFS;
            }
            return -errno;
        }
        if (n > NFB_CT_RBUF) {
            c->truncated++;
            n = NFB_CT_RBUF;
        }
        h = (const struct nlmsghdr *)c->rbuf;
        remaining = (int)n;
        for (; nfb_nlmsg_ok(h, remaining); h = mnl_nlmsg_next(h, &remaining)) {
            int rc;
            if (h->nlmsg_seq != c->seq) {
                c->ignored++;      /* a stale answer to an earlier request */
                continue;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = mnl_nlmsg_get_payload(h);
                if (h->nlmsg_len < NLMSG_HDRLEN + sizeof(*e)) {
                    c->error = -EBADMSG;
                } else {
                    c->error = e->error;
                    if (e->error)
                        nfb_extack(c, h);
                }
                c->done = 1;
                break;
            }
            if (h->nlmsg_type == NLMSG_DONE) {
                if (h->nlmsg_len >= NLMSG_HDRLEN + sizeof(int)) {
                    int err;
                    memcpy(&err, mnl_nlmsg_get_payload(h), sizeof(err));
                    if (err < 0)
                        c->error = err;
                }
                c->done = 1;
                break;
            }
            if (h->nlmsg_type < NLMSG_MIN_TYPE)
                continue;
            rc = nfb_take(c, h, mode, 0);
            if (rc < 0)
                return rc;
        }
    }
    return mode == NFB_M_RAW ? c->nmsgs : c->nrecs;
}

int nfb_ct_recv_events(struct nfb_ct *c)
{
    int i, r;

    c->nrecs = 0;
    c->nv6 = 0;
    c->nmsgs = 0;
    c->data_len = 0;
    if (!c->nslots)
        return -EINVAL;
    for (i = 0; i < c->nslots; i++) {
        c->iov[i].iov_base = c->slots + (size_t)i * NFB_CT_SLOT;
        c->iov[i].iov_len = NFB_CT_SLOT;
        memset(&c->mm[i].msg_hdr, 0, sizeof(c->mm[i].msg_hdr));
        c->mm[i].msg_hdr.msg_iov = &c->iov[i];
        c->mm[i].msg_hdr.msg_iovlen = 1;
        c->mm[i].msg_len = 0;
    }
    c->recv_calls++;
    r = recvmmsg(c->fd, c->mm, c->nslots, MSG_DONTWAIT, NULL);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        if (errno == ENOBUFS)
            c->overruns++;
        return -errno;
    }
    for (i = 0; i < r; i++) {
        const struct nlmsghdr *h = (const struct nlmsghdr *)(c->slots + (size_t)i * NFB_CT_SLOT);
        int remaining = (int)c->mm[i].msg_len;
        if (c->mm[i].msg_hdr.msg_flags & MSG_TRUNC) {
            c->truncated++;
            continue;
        }
        for (; nfb_nlmsg_ok(h, remaining); h = mnl_nlmsg_next(h, &remaining)) {
            int rc;
            if (h->nlmsg_type < NLMSG_MIN_TYPE)
                continue;
            rc = nfb_take(c, h, NFB_M_RECORDS, 1);
            if (rc < 0)
                return rc;
        }
    }
    return c->nrecs;
}
