/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind's C helper for NFLOG (declared for Python in cdef/nflog.h): packet
 * parsing against the kernel's NFULA_* enum, because libnetfilter_log
 * 1.0.2's parser drops NFULA_VLAN and NFULA_L2HDR, and the groups'
 * configuration built with libnetfilter_log's nflog_nlmsg_*.  Receiving
 * and the wait for acknowledgements are the core's (cdef/core.c, a private
 * copy here).
 */
#include "core.c"
#include <libnetfilter_log/libnetfilter_log.h>

/* distinct prefixes numbered by nfb_log_hot() (cdef/nflog.h declares the
 * table as [256][64]) */
#define NFB_LOG_PREFIXES 255
#define NFB_LOG_PREFIX_MAX 64     /* the longest a rule's prefix can be */
#define NFB_LOG_PREFIX_NONE 0     /* the packet has no prefix */
#define NFB_LOG_PREFIX_OTHER 0xffffffffu  /* not numbered: read it from the record */

struct nfb_log {
    struct nfb_rx rx;
    int family;             /* keep only packets of this family; -1: all */
    uint64_t filtered;      /* packets skipped by the family filter */
    struct nfb_hot *hot;    /* nfb_log_hot(): one per packet of the batch */
    int hot_cap;
    int nprefixes;          /* prefixes numbered so far (1..nprefixes) */
    uint8_t prefix_len[NFB_LOG_PREFIXES + 1];
    char prefixes[NFB_LOG_PREFIXES + 1][NFB_LOG_PREFIX_MAX];
};

struct nfb_logcfg {
    int cmd;                /* NFULNL_CFG_CMD_BIND / _UNBIND, or 0 */
    int copy_mode;          /* NFULNL_COPY_*, or -1: unchanged */
    uint32_t copy_range;
    int64_t nlbufsiz;       /* -1: unchanged */
    int64_t timeout;        /* 1/100 s, -1: unchanged */
    int64_t qthresh;        /* -1: unchanged */
    int flags;              /* NFULNL_CFG_F_*, or -1: unchanged */
};

struct nfb_log *nfb_log_new(int fd, uint32_t slot_size, int nslots, int family)
{
    struct nfb_log *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->family = family;
    if (nfb_rx_init(&l->rx, fd, slot_size, nslots) < 0) {
        free(l);
        return NULL;
    }
    return l;
}

void nfb_log_free(struct nfb_log *l)
{
    if (!l)
        return;
    nfb_rx_release(&l->rx);
    free(l->hot);
    free(l);
}

/* The number of the prefix rec points at: 1.. in the order prefixes were
 * first seen, NFB_LOG_PREFIX_NONE, or NFB_LOG_PREFIX_OTHER once the table
 * is full (or for a prefix longer than a rule's can be). */
static uint32_t nfb_log_prefix_number(struct nfb_log *l, const uint32_t *rec)
{
    const char *p;
    uint32_t len;
    int i;

    if (!(rec[NFB_F_ATTRS] & NFB_A_PREFIX))
        return NFB_LOG_PREFIX_NONE;
    p = l->rx.data + rec[NFB_F_PREFIX_OFF];
    len = rec[NFB_F_PREFIX_LEN];
    if (len >= NFB_LOG_PREFIX_MAX)
        return NFB_LOG_PREFIX_OTHER;
    for (i = 1; i <= l->nprefixes; i++)
        if (l->prefix_len[i] == len && memcmp(l->prefixes[i], p, len) == 0)
            return (uint32_t)i;
    if (l->nprefixes == NFB_LOG_PREFIXES)
        return NFB_LOG_PREFIX_OTHER;
    i = ++l->nprefixes;
    l->prefix_len[i] = (uint8_t)len;
    memcpy(l->prefixes[i], p, len);
    return (uint32_t)i;
}

/* The hot fields of the current batch's packets into l->hot (the prefix's
 * number in extra).  Returns the number of packets, or -ENOMEM. */
int nfb_log_hot(struct nfb_log *l)
{
    int i, n = l->rx.npkts;

    if (n > l->hot_cap) {
        struct nfb_hot *h = realloc(l->hot, sizeof(*h) * (size_t)n);
        if (!h)
            return -ENOMEM;
        l->hot = h;
        l->hot_cap = n;
    }
    for (i = 0; i < n; i++) {
        const uint32_t *rec = l->rx.recs + (size_t)i * NFB_F_COUNT;
        nfb_hot_from_rec(rec, &l->hot[i]);
        l->hot[i].extra = nfb_log_prefix_number(l, rec);
    }
    return n;
}

/* NFULA_* attribute -> nfbind's presence bit in NFB_F_ATTRS */
static const uint32_t nfb_nfula_bit[NFULA_MAX + 1] = {
    [NFULA_MARK] = NFB_A_MARK,
    [NFULA_TIMESTAMP] = NFB_A_TIMESTAMP,
    [NFULA_IFINDEX_INDEV] = NFB_A_INDEV,
    [NFULA_IFINDEX_OUTDEV] = NFB_A_OUTDEV,
    [NFULA_IFINDEX_PHYSINDEV] = NFB_A_PHYSINDEV,
    [NFULA_IFINDEX_PHYSOUTDEV] = NFB_A_PHYSOUTDEV,
    [NFULA_HWADDR] = NFB_A_HWADDR,
    [NFULA_PAYLOAD] = NFB_A_PAYLOAD,
    [NFULA_PREFIX] = NFB_A_PREFIX,
    [NFULA_UID] = NFB_A_UID,
    [NFULA_SEQ] = NFB_A_SEQ,
    [NFULA_SEQ_GLOBAL] = NFB_A_SEQ_GLOBAL,
    [NFULA_GID] = NFB_A_GID,
    [NFULA_HWTYPE] = NFB_A_HWTYPE,
    [NFULA_HWHEADER] = NFB_A_HWHDR,
    [NFULA_CT] = NFB_A_CT,
    [NFULA_CT_INFO] = NFB_A_CTINFO,
    [NFULA_VLAN] = NFB_A_VLAN,
    [NFULA_L2HDR] = NFB_A_L2HDR,
};

/* NFULA_* attributes that carry one be32 -> their record word (0: none) */
static const int8_t nfb_nfula_u32[NFULA_MAX + 1] = {
    [NFULA_MARK] = NFB_F_MARK,
    [NFULA_IFINDEX_INDEV] = NFB_F_INDEV,
    [NFULA_IFINDEX_OUTDEV] = NFB_F_OUTDEV,
    [NFULA_IFINDEX_PHYSINDEV] = NFB_F_PHYSINDEV,
    [NFULA_IFINDEX_PHYSOUTDEV] = NFB_F_PHYSOUTDEV,
    [NFULA_UID] = NFB_F_UID,
    [NFULA_GID] = NFB_F_GID,
    [NFULA_SEQ] = NFB_F_SEQ,
    [NFULA_SEQ_GLOBAL] = NFB_F_SEQ_GLOBAL,
    [NFULA_CT_INFO] = NFB_F_CTINFO,
};

/* Parse one NFULNL_MSG_PACKET message into rec; offsets relative to base. */
static int nfb_log_parse_packet(void *ctx, const struct nlmsghdr *nlh,
                                const char *base, uint32_t *rec)
{
    struct nfb_log *l = ctx;
    const struct nfgenmsg *nfg = mnl_nlmsg_get_payload(nlh);
    const char *ap = nfb_msg_attrs(nlh, sizeof(*nfg));
    int alen = nfb_msg_attrlen(nlh, sizeof(*nfg));
    const struct nlattr *attr;
    uint32_t attrs = 0;
    uint16_t hwlen = 0;
    int has_hwlen = 0;

    if (l->family >= 0 && nfg->nfgen_family != l->family) {
        l->filtered++;
        return 0;
    }
    rec[NFB_F_FAMILY] = nfg->nfgen_family;
    rec[NFB_F_QUEUE] = ntohs(nfg->res_id);

    nfb_attr_for_each(attr, ap, alen) {
        uint16_t type = nfb_attr_type(attr);
        uint16_t len = nfb_attr_len(attr);
        const char *p = nfb_attr_data(attr);
        uint32_t off = (uint32_t)(p - base);

        if (type > NFULA_MAX)
            continue;
        if (nfb_nfula_u32[type]) {
            if (len < 4)
                continue;
            rec[nfb_nfula_u32[type]] = nfb_be32(p);
        } else switch (type) {
        case NFULA_PACKET_HDR: {
            const struct nfulnl_msg_packet_hdr *ph = (const void *)p;
            if (len < sizeof(*ph))
                continue;
            rec[NFB_F_HWPROTO] = ntohs(ph->hw_protocol);
            rec[NFB_F_HOOK] = ph->hook;
            break;
        }
        case NFULA_TIMESTAMP:
            if (!nfb_rec_timestamp(rec, p, len))
                continue;
            break;
        case NFULA_HWADDR:
            if (!NFB_REC_HWADDR(rec, p, len, base, struct nfulnl_msg_packet_hw))
                continue;
            break;
        case NFULA_HWTYPE:
            if (len < 2)
                continue;
            rec[NFB_F_HWTYPE] = nfb_be16(p);
            break;
        case NFULA_HWLEN:
            if (len < 2)
                continue;
            hwlen = nfb_be16(p);
            has_hwlen = 1;
            continue;
        case NFULA_HWHEADER:
            nfb_rec_range(rec, NFB_F_HWHDR_OFF, off, len);
            break;
        case NFULA_PAYLOAD:
            nfb_rec_range(rec, NFB_F_PAYLOAD_OFF, off, len);
            break;
        case NFULA_PREFIX:  /* NUL-terminated */
            nfb_rec_string(rec, NFB_F_PREFIX_OFF, p, off, len);
            break;
        case NFULA_L2HDR:
            nfb_rec_range(rec, NFB_F_L2HDR_OFF, off, len);
            break;
        case NFULA_CT:
            nfb_rec_range(rec, NFB_F_CT_OFF, off, len);
            break;
        case NFULA_VLAN:
            nfb_rec_vlan(rec, attr, NFULA_VLAN_PROTO, NFULA_VLAN_TCI);
            break;
        default:
            continue;
        }
        attrs |= nfb_nfula_bit[type];
    }
    /* the kernel's HWLEN bounds the hardware header it sent */
    if (has_hwlen && (attrs & NFB_A_HWHDR) && hwlen < rec[NFB_F_HWHDR_LEN])
        rec[NFB_F_HWHDR_LEN] = hwlen;
    /* NFLOG sends no original length: take it from the IP header, so that a
     * payload cut by copy_range or --nflog-size shows as truncated */
    if (attrs & NFB_A_PAYLOAD) {
        const unsigned char *ip = (const unsigned char *)base + rec[NFB_F_PAYLOAD_OFF];
        uint32_t plen = rec[NFB_F_PAYLOAD_LEN], full = 0;
        if (plen >= 4 && (ip[0] >> 4) == 4)
            full = ((uint32_t)ip[2] << 8) | ip[3];
        else if (plen >= 6 && (ip[0] >> 4) == 6)
            full = 40 + (((uint32_t)ip[4] << 8) | ip[5]);
        if (full > plen) {
            rec[NFB_F_CAPLEN] = full;
            attrs |= NFB_A_CAPLEN;
        }
    }
    rec[NFB_F_ATTRS] = attrs;
    return 1;
}

int nfb_log_recv(struct nfb_log *l)
{
    return nfb_rx_recv(&l->rx, (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET,
                       nfb_log_parse_packet, l);
}

/* Configure groups[0..ngroups) alike; waits for the kernel's answers.
 * Returns 0 or -errno; *failed_group and *failed_step (NFB_STEP_*) say
 * what failed. */
int nfb_log_config(struct nfb_log *l, const uint16_t *groups, int ngroups,
                   const struct nfb_logcfg *cfg, int timeout_ms,
                   int *failed_group, int *failed_step)
{
    enum { PER_GROUP = 6 };
    char *buf;
    uint32_t *seqs;
    int *steps, *results, *owner;
    size_t off = 0;
    int nmsg = 0, rc = -ENOMEM, g, i;
    struct nlmsghdr *nlh;
    struct nfb_txn t;

    *failed_group = -1;
    *failed_step = 0;
    buf = calloc((size_t)ngroups * PER_GROUP, 128);
    seqs = calloc((size_t)ngroups * PER_GROUP, sizeof(*seqs));
    steps = calloc((size_t)ngroups * PER_GROUP, sizeof(*steps));
    results = calloc((size_t)ngroups * PER_GROUP, sizeof(*results));
    owner = calloc((size_t)ngroups * PER_GROUP, sizeof(*owner));
    if (!buf || !seqs || !steps || !results || !owner)
        goto out;

#define NFB_MSG(step) do {                                                  \
        nlh = nflog_nlmsg_put_header(buf + off, NFULNL_MSG_CONFIG, AF_UNSPEC, \
                                     groups[g]);                            \
        nlh->nlmsg_flags |= NLM_F_ACK;                                      \
        nlh->nlmsg_seq = seqs[nmsg] = ++l->rx.seq;                          \
        steps[nmsg] = (step);                                               \
        owner[nmsg] = g;                                                    \
    } while (0)
#define NFB_END() do { off += NLMSG_ALIGN(nlh->nlmsg_len); nmsg++; } while (0)
    for (g = 0; g < ngroups; g++) {
        if (cfg->cmd) {
            NFB_MSG(NFB_STEP_BIND);
            nflog_attr_put_cfg_cmd(nlh, (uint8_t)cfg->cmd);
            NFB_END();
        }
        if (cfg->copy_mode >= 0) {
            NFB_MSG(NFB_STEP_PARAMS);
            nflog_attr_put_cfg_mode(nlh, (uint8_t)cfg->copy_mode, cfg->copy_range);
            NFB_END();
        }
        if (cfg->nlbufsiz >= 0) {
            NFB_MSG(NFB_STEP_NLBUFSIZ);
            mnl_attr_put_u32(nlh, NFULA_CFG_NLBUFSIZ, htonl((uint32_t)cfg->nlbufsiz));
            NFB_END();
        }
        if (cfg->timeout >= 0) {
            NFB_MSG(NFB_STEP_TIMEOUT);
            mnl_attr_put_u32(nlh, NFULA_CFG_TIMEOUT, htonl((uint32_t)cfg->timeout));
            NFB_END();
        }
        if (cfg->qthresh >= 0) {
            NFB_MSG(NFB_STEP_QTHRESH);
            mnl_attr_put_u32(nlh, NFULA_CFG_QTHRESH, htonl((uint32_t)cfg->qthresh));
            NFB_END();
        }
        if (cfg->flags >= 0) {
            NFB_MSG(NFB_STEP_FLAGS);
            mnl_attr_put_u16(nlh, NFULA_CFG_FLAGS, htons((uint16_t)cfg->flags));
            NFB_END();
        }
    }
#undef NFB_MSG
#undef NFB_END
    /* packets that arrive meanwhile are stashed for the next nfb_log_recv() */
    nfb_txn_init(&t, nmsg, seqs, results);
    t.stash = 1;
    rc = nfb_rx_transact(&l->rx, &t, buf, off, timeout_ms);
    rc = nfb_txn_first_error(rc, &t, steps, failed_step);
    if (rc < 0)
        for (i = 0; i < nmsg; i++)
            if (results[i] != 0) {
                *failed_group = groups[owner[i]];
                break;
            }
out:
    free(buf); free(seqs); free(steps); free(results); free(owner);
    return rc;
}
