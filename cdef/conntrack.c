/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind's C helper for conntrack (declared for Python in cdef/conntrack.h).
 *
 * Requests are built with libnetfilter_conntrack objects and
 * nfct_nlmsg_build()/nfexp_nlmsg_build()/nfct_nlmsg_build_filter(): only the
 * attributes set on the object are sent, so an update carries the tuple, the
 * zone and what changes, nothing else.
 *
 * Answers and events are received by the core's batcher and transaction
 * and parsed by the core's CTA_* parser (cdef/core.c, a private copy here)
 * into struct nfb_ct_rec records, many per call, so Python pays one call per
 * batch instead of one per attribute.
 */
#include "core.c"
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>

/* ---- requests and the socket ---------------------------------------------------- */

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
    uint16_t zone;
    uint32_t orig_flags;        /* NFB_CTF_*: the fields of orig to match */
    uint32_t reply_flags;       /* NFB_CTF_*: the fields of reply to match */
    struct nfb_ct_tuple orig;
    struct nfb_ct_tuple reply;
};

enum {
    NFB_DF_MARK = 1u << 0,
    NFB_DF_STATUS = 1u << 1,
    NFB_DF_ZONE = 1u << 2,      /* CTA_ZONE: the kernel filters by zone since 6.8 */
};

/* The kernel's CTA_FILTER_F_* flags (net/netfilter/nf_internals.h, which no
 * userspace header exports; ABI since Linux 5.8): which fields of the
 * CTA_TUPLE_ORIG / CTA_TUPLE_REPLY sent with CTA_FILTER a dump or flush
 * compares.  The kernel compares ports for TCP and UDP only, and refuses
 * port flags without CTA_PROTO_NUM (EINVAL) and unknown flags (EOPNOTSUPP). */
enum {
    NFB_CTF_IP_SRC = 1u << 0,
    NFB_CTF_IP_DST = 1u << 1,
    NFB_CTF_TUPLE_ZONE = 1u << 2,
    NFB_CTF_PROTO_NUM = 1u << 3,
    NFB_CTF_PROTO_SRC_PORT = 1u << 4,
    NFB_CTF_PROTO_DST_PORT = 1u << 5,
    NFB_CTF_PROTO_ICMP_TYPE = 1u << 6,
    NFB_CTF_PROTO_ICMP_CODE = 1u << 7,
    NFB_CTF_PROTO_ICMP_ID = 1u << 8,
    NFB_CTF_PROTO_ICMPV6_TYPE = 1u << 9,
    NFB_CTF_PROTO_ICMPV6_CODE = 1u << 10,
    NFB_CTF_PROTO_ICMPV6_ID = 1u << 11,
};

enum { NFB_M_RECORDS = 0, NFB_M_RAW = 1 };

/* A request fits easily: a flow with both tuples, labels and NAT is < 512. */
#define NFB_CT_BUFSIZE 8192
/* Answers: a dump datagram holds at most 32 KiB (the kernel's limit per skb);
 * a few per receive, as the kernel makes the next one while the last is read. */
#define NFB_CT_ANSWER_SLOT (64 * 1024)
#define NFB_CT_ANSWER_SLOTS 4
/* Events: one message per datagram, a few hundred bytes. */
#define NFB_CT_EVENT_SLOT 8192

struct nfb_ct {
    struct nfb_rx rx;       /* the socket, its receive buffer and counters */
    uint32_t seq;           /* the last request's sequence number */
    int done;               /* the answer to the last request is complete */
    int error;              /* the kernel's answer: 0 or -errno */
    char errmsg[128];       /* the kernel's extended ack message, if any */
    /* the batch: records, or raw messages (data + offsets) */
    struct nfb_ct_rec *recs;
    int nrecs;
    int nv6;                /* how many of the records are IPv6 flows */
    char *data;
    size_t data_len;
    uint32_t *moffs;
    int nmsgs;
    /* private */
    int mode;               /* of the answer being received: NFB_M_* */
    int max_items;
    int recs_cap;
    int moffs_cap;
    size_t data_cap;
};

struct nfb_ct *nfb_ct_new(int fd, int nslots)
{
    struct nfb_ct *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    if (nfb_rx_init(&c->rx, fd, nslots > 0 ? NFB_CT_EVENT_SLOT : NFB_CT_ANSWER_SLOT,
                    nslots > 0 ? nslots : NFB_CT_ANSWER_SLOTS) < 0) {
        free(c);
        return NULL;
    }
    c->seq = (uint32_t)time(NULL) << 8;
    c->done = 1;
    c->recs_cap = 256;
    c->recs = malloc(sizeof(*c->recs) * c->recs_cap);
    c->moffs_cap = 64;
    c->moffs = malloc(sizeof(*c->moffs) * c->moffs_cap);
    c->data_cap = 64 * 1024;
    c->data = malloc(c->data_cap);
    if (!c->recs || !c->moffs || !c->data) {
        nfb_rx_release(&c->rx);
        free(c->recs);
        free(c->moffs);
        free(c->data);
        free(c);
        return NULL;
    }
    return c;
}

void nfb_ct_free(struct nfb_ct *c)
{
    if (!c)
        return;
    nfb_rx_release(&c->rx);
    free(c->recs);
    free(c->moffs);
    free(c->data);
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

/* Append len bytes to the batch data; returns their offset or -1.  The
 * parser's sink for security context strings. */
static int64_t nfb_append(void *ctx, const void *p, size_t len)
{
    struct nfb_ct *c = ctx;
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

/* Put a CTA_TUPLE_* nest (type) holding the fields of t that flags names
 * (NFB_CTF_*), as the kernel's tuple parser reads them. */
static void nfb_put_tuple(struct nlmsghdr *nlh, uint16_t type, uint8_t family,
                          const struct nfb_ct_tuple *t, uint32_t flags)
{
    struct nlattr *tuple = mnl_attr_nest_start(nlh, type);
    int v6 = family == AF_INET6;

    if (flags & (NFB_CTF_IP_SRC | NFB_CTF_IP_DST)) {
        struct nlattr *ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
        if (flags & NFB_CTF_IP_SRC)
            mnl_attr_put(nlh, v6 ? CTA_IP_V6_SRC : CTA_IP_V4_SRC, v6 ? 16 : 4, t->src);
        if (flags & NFB_CTF_IP_DST)
            mnl_attr_put(nlh, v6 ? CTA_IP_V6_DST : CTA_IP_V4_DST, v6 ? 16 : 4, t->dst);
        mnl_attr_nest_end(nlh, ip);
    }
    if (flags & NFB_CTF_PROTO_NUM) {
        struct nlattr *pr = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
        mnl_attr_put_u8(nlh, CTA_PROTO_NUM, t->proto);
        if (flags & NFB_CTF_PROTO_SRC_PORT)
            mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(t->sport));
        if (flags & NFB_CTF_PROTO_DST_PORT)
            mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(t->dport));
        if (flags & (NFB_CTF_PROTO_ICMP_ID | NFB_CTF_PROTO_ICMPV6_ID))
            mnl_attr_put_u16(nlh, v6 ? CTA_PROTO_ICMPV6_ID : CTA_PROTO_ICMP_ID, htons(t->icmp_id));
        if (flags & (NFB_CTF_PROTO_ICMP_TYPE | NFB_CTF_PROTO_ICMPV6_TYPE))
            mnl_attr_put_u8(nlh, v6 ? CTA_PROTO_ICMPV6_TYPE : CTA_PROTO_ICMP_TYPE, t->icmp_type);
        if (flags & (NFB_CTF_PROTO_ICMP_CODE | NFB_CTF_PROTO_ICMPV6_CODE))
            mnl_attr_put_u8(nlh, v6 ? CTA_PROTO_ICMPV6_CODE : CTA_PROTO_ICMP_CODE, t->icmp_code);
        mnl_attr_nest_end(nlh, pr);
    }
    if ((flags & NFB_CTF_TUPLE_ZONE) && (t->has & NFB_T_ZONE))
        mnl_attr_put_u16(nlh, CTA_TUPLE_ZONE, htons(t->zone));
    mnl_attr_nest_end(nlh, tuple);
}

/* Every field of t a lookup needs (for the kernel's ctnetlink_parse_tuple). */
static uint32_t nfb_lookup_flags(const struct nfb_ct_tuple *t)
{
    uint32_t f = NFB_CTF_IP_SRC | NFB_CTF_IP_DST | NFB_CTF_PROTO_NUM | NFB_CTF_TUPLE_ZONE;
    if (nfb_proto_has_ports(t->proto))
        f |= NFB_CTF_PROTO_SRC_PORT | NFB_CTF_PROTO_DST_PORT;
    else if (t->proto == IPPROTO_ICMP || t->proto == IPPROTO_ICMPV6)
        f |= NFB_CTF_PROTO_ICMP_TYPE | NFB_CTF_PROTO_ICMP_CODE | NFB_CTF_PROTO_ICMP_ID;
    return f;
}

int nfb_ct_build_lookup(char *buf, uint8_t msg, uint16_t flags, uint8_t family,
                        const struct nfb_ct_tuple *t, int by_reply, uint16_t zone)
{
    struct nlmsghdr *nlh = nfb_put_header(buf, NFNL_SUBSYS_CTNETLINK, msg, flags);
    nfb_put_nfgen(nlh, family, 0);
    nfb_put_tuple(nlh, by_reply ? CTA_TUPLE_REPLY : CTA_TUPLE_ORIG, family, t,
                  nfb_lookup_flags(t));
    if (zone)
        mnl_attr_put_u16(nlh, CTA_ZONE, htons(zone));
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
    /* what libnetfilter_conntrack 1.0.9 cannot send: the zone, and the
     * tuple filter (CTA_FILTER with the tuples it names) */
    if (f->set & NFB_DF_ZONE)
        mnl_attr_put_u16(nlh, CTA_ZONE, htons(f->zone));
    if (f->orig_flags)
        nfb_put_tuple(nlh, CTA_TUPLE_ORIG, f->family, &f->orig, f->orig_flags);
    if (f->reply_flags)
        nfb_put_tuple(nlh, CTA_TUPLE_REPLY, f->family, &f->reply, f->reply_flags);
    if (f->orig_flags || f->reply_flags) {
        struct nlattr *n = mnl_attr_nest_start(nlh, CTA_FILTER);
        /* NLA_U32 in host order, unlike the conntrack attributes */
        if (f->orig_flags)
            mnl_attr_put_u32(nlh, CTA_FILTER_ORIG_FLAGS, f->orig_flags);
        if (f->reply_flags)
            mnl_attr_put_u32(nlh, CTA_FILTER_REPLY_FLAGS, f->reply_flags);
        mnl_attr_nest_end(nlh, n);
    }
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
    if (nfb_proto_has_ports(t->proto)) {
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
    int rc;

    c->seq++;
    if (c->seq == 0)
        c->seq = 1;
    nlh->nlmsg_seq = c->seq;
    c->done = 0;
    c->error = 0;
    c->errmsg[0] = '\0';
    rc = nfb_rx_send(&c->rx, buf, len);
    if (rc < 0)
        c->done = 1;
    return rc;
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

static void nfb_batch_reset(struct nfb_ct *c)
{
    c->nrecs = 0;
    c->nv6 = 0;
    c->nmsgs = 0;
    c->data_len = 0;
}

/* Take one ctnetlink message of an answer or an event stream into the batch. */
static int nfb_take(struct nfb_ct *c, const struct nlmsghdr *h, int mode, int event)
{
    const struct nfgenmsg *nfg;
    uint8_t subsys = h->nlmsg_type >> 8;
    uint8_t msg = h->nlmsg_type & 0xff;
    struct nfb_ct_rec *r;

    if (h->nlmsg_len < NLMSG_HDRLEN + sizeof(struct nfgenmsg)) {
        c->rx.ignored++;
        return 0;
    }
    if (mode == NFB_M_RAW)
        return nfb_keep_raw(c, h);
    if (subsys != NFNL_SUBSYS_CTNETLINK ||
        (msg != IPCTNL_MSG_CT_NEW && msg != IPCTNL_MSG_CT_DELETE)) {
        c->rx.ignored++;
        return 0;
    }
    nfg = mnl_nlmsg_get_payload(h);
    r = nfb_next_rec(c);
    if (!r)
        return -ENOMEM;
    nfb_ct_parse((const char *)nfg + sizeof(*nfg), h->nlmsg_len - NLMSG_HDRLEN - sizeof(*nfg),
                 nfg->nfgen_family, r, nfb_append, c);
    if (nfg->nfgen_family == AF_INET6)
        c->nv6++;
    r->event = event ? nfb_event_type(h) : 0;
    return 0;
}

/* The transaction's on_data: one message of the answer; pause when the
 * batch is full. */
static int nfb_take_answer(void *ctx, const struct nlmsghdr *h, int i)
{
    struct nfb_ct *c = ctx;
    int rc = nfb_take(c, h, c->mode, 0);
    (void)i;
    if (rc < 0)
        return rc;
    return (c->mode == NFB_M_RAW ? c->nmsgs : c->nrecs) >= c->max_items;
}

int nfb_ct_recv_answer(struct nfb_ct *c, int mode, int max_items, int timeout_ms)
{
    struct nfb_txn t;
    int result, rc;

    nfb_batch_reset(c);
    if (c->done || max_items <= 0)
        return 0;
    nfb_txn_init(&t, 1, &c->seq, &result);
    t.overrun_ends = 1;     /* a lost part of a dump cannot be asked again */
    t.on_data = nfb_take_answer;
    t.ctx = c;
    c->mode = mode;
    c->max_items = max_items;
    rc = nfb_rx_answers(&c->rx, &t, timeout_ms);
    if (rc < 0)
        return rc;
    if (rc == 0) {
        c->done = 1;
        c->error = result;
        if (result)
            memcpy(c->errmsg, t.errmsg, sizeof(c->errmsg));
    }
    return mode == NFB_M_RAW ? c->nmsgs : c->nrecs;
}

static int nfb_ct_recv_mode(struct nfb_ct *c, int mode)
{
    const struct nlmsghdr *h;
    int remaining, r;

    nfb_batch_reset(c);
    r = nfb_rx_fill(&c->rx);
    if (r <= 0)
        return r;
    nfb_msg_for_each(h, c->rx.rbuf, c->rx.end, remaining) {
        if (h->nlmsg_type == NLMSG_ERROR) {
            nfb_rx_async_error(&c->rx, h);
            continue;
        }
        if (h->nlmsg_type < NLMSG_MIN_TYPE)
            continue;
        r = nfb_take(c, h, mode, 1);
        if (r < 0)
            return r;
    }
    c->rx.pos = c->rx.end;
    return mode == NFB_M_RAW ? c->nmsgs : c->nrecs;
}

int nfb_ct_recv_events(struct nfb_ct *c)
{
    return nfb_ct_recv_mode(c, NFB_M_RECORDS);
}

int nfb_ct_recv_raw_events(struct nfb_ct *c)
{
    return nfb_ct_recv_mode(c, NFB_M_RAW);
}
