/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind's C helper for NFQUEUE (declared for Python in cdef/nfqueue.h):
 * packet parsing against the kernel's NFQA_* enum, the queue's
 * configuration built with libnetfilter_queue's nfq_nlmsg_*, and batched
 * verdicts (many netlink messages per sendmsg, and NFQNL_MSG_VERDICT_BATCH
 * for runs of one verdict).  Receiving and the wait for acknowledgements
 * are the core's (cdef/core.c, a private copy here).
 */
#include "core.c"
#include <libnetfilter_queue/libnetfilter_queue.h>

#define NFB_MAX_PAYLOAD (0xFFFF - NLA_HDRLEN)

#define NFB_V_DONE (-1)
#define NFB_V_DEFERRED (-2)
#define NFB_V_CLOSED (-3)
#define NFB_V_TIMEOUT (-4)

#define NFB_VF_MARK 1
#define NFB_VF_CONNMARK 2
#define NFB_VF_PAYLOAD 4
#define NFB_VF_BATCH 8
#define NFB_VF_LABELS 16        /* CTA_LABELS + CTA_LABELS_MASK in NFQA_CT */
/* bytes of connection labels (128 bits), and of their mask */
#define NFB_LABELS_LEN 16

/* A verdict message without payload needs well under this many bytes. */
#define NFB_VMSG_SMALL 256
/* Bytes of send buffer; stays below the default netlink sndbuf. */
#define NFB_SBUF_SIZE (160 * 1024)

struct nfb_q {
    struct nfb_rx rx;
    uint16_t queue;
    uint64_t batch_verdicts;
    uint64_t by_verdict[NF_MAX_VERDICT + 1];
    uint64_t packets;       /* packets taken, each id once */
    uint32_t last_id;       /* the highest id taken */
    int have_id;
    char *sbuf;             /* pending verdict messages */
    size_t slen;
    struct nfb_hot *hot;    /* nfb_q_hot(): one per packet of the batch */
    int hot_cap;
};

struct nfb_q *nfb_q_new(int fd, uint16_t queue, uint32_t slot_size, int nslots)
{
    struct nfb_q *q = calloc(1, sizeof(*q));
    if (!q)
        return NULL;
    q->queue = queue;
    q->sbuf = malloc(NFB_SBUF_SIZE);
    if (!q->sbuf || nfb_rx_init(&q->rx, fd, slot_size, nslots) < 0) {
        free(q->sbuf);
        free(q);
        return NULL;
    }
    q->rx.hold = 1;         /* a batch stays until Python has taken it */
    return q;
}

void nfb_q_free(struct nfb_q *q)
{
    if (!q)
        return;
    nfb_rx_release(&q->rx);
    free(q->sbuf);
    free(q->hot);
    free(q);
}

/* The hot fields of the current batch's packets into q->hot (the packet id
 * in extra).  Returns the number of packets, or -ENOMEM. */
int nfb_q_hot(struct nfb_q *q)
{
    int i, n = q->rx.npkts;

    if (n > q->hot_cap) {
        struct nfb_hot *h = realloc(q->hot, sizeof(*h) * (size_t)n);
        if (!h)
            return -ENOMEM;
        q->hot = h;
        q->hot_cap = n;
    }
    for (i = 0; i < n; i++) {
        const uint32_t *rec = q->rx.recs + (size_t)i * NFB_F_COUNT;
        nfb_hot_from_rec(rec, &q->hot[i]);
        q->hot[i].extra = rec[NFB_F_ID];
    }
    return n;
}

int nfb_q_resize(struct nfb_q *q, uint32_t slot_size, int nslots)
{
    return nfb_rx_alloc(&q->rx, slot_size, nslots);
}

/* NFQA_* attributes that carry one be32 -> their record word (0: none) */
static const int8_t nfb_nfqa_u32[NFQA_MAX + 1] = {
    [NFQA_MARK] = NFB_F_MARK,
    [NFQA_IFINDEX_INDEV] = NFB_F_INDEV,
    [NFQA_IFINDEX_OUTDEV] = NFB_F_OUTDEV,
    [NFQA_IFINDEX_PHYSINDEV] = NFB_F_PHYSINDEV,
    [NFQA_IFINDEX_PHYSOUTDEV] = NFB_F_PHYSOUTDEV,
    [NFQA_CT_INFO] = NFB_F_CTINFO,
    [NFQA_CAP_LEN] = NFB_F_CAPLEN,
    [NFQA_SKB_INFO] = NFB_F_SKBINFO,
    [NFQA_UID] = NFB_F_UID,
    [NFQA_GID] = NFB_F_GID,
    [NFQA_PRIORITY] = NFB_F_PRIORITY,
};

/* NFQA_* attribute -> nfbind's presence bit in NFB_F_ATTRS */
static const uint32_t nfb_nfqa_bit[NFQA_MAX + 1] = {
    [NFQA_MARK] = NFB_A_MARK,
    [NFQA_TIMESTAMP] = NFB_A_TIMESTAMP,
    [NFQA_IFINDEX_INDEV] = NFB_A_INDEV,
    [NFQA_IFINDEX_OUTDEV] = NFB_A_OUTDEV,
    [NFQA_IFINDEX_PHYSINDEV] = NFB_A_PHYSINDEV,
    [NFQA_IFINDEX_PHYSOUTDEV] = NFB_A_PHYSOUTDEV,
    [NFQA_HWADDR] = NFB_A_HWADDR,
    [NFQA_PAYLOAD] = NFB_A_PAYLOAD,
    [NFQA_CT] = NFB_A_CT,
    [NFQA_CT_INFO] = NFB_A_CTINFO,
    [NFQA_CAP_LEN] = NFB_A_CAPLEN,
    [NFQA_SKB_INFO] = NFB_A_SKBINFO,
    [NFQA_EXP] = NFB_A_EXP,
    [NFQA_UID] = NFB_A_UID,
    [NFQA_GID] = NFB_A_GID,
    [NFQA_SECCTX] = NFB_A_SECCTX,
    [NFQA_VLAN] = NFB_A_VLAN,
    [NFQA_L2HDR] = NFB_A_L2HDR,
    [NFQA_PRIORITY] = NFB_A_PRIORITY,
};

/* Parse one NFQNL_MSG_PACKET message into rec; offsets relative to base. */
static int nfb_q_parse_packet(void *ctx, const struct nlmsghdr *nlh,
                              const char *base, uint32_t *rec)
{
    const struct nfgenmsg *nfg = mnl_nlmsg_get_payload(nlh);
    const char *ap = nfb_msg_attrs(nlh, sizeof(*nfg));
    int alen = nfb_msg_attrlen(nlh, sizeof(*nfg));
    const struct nlattr *attr;
    uint32_t attrs = 0;

    (void)ctx;
    rec[NFB_F_FAMILY] = nfg->nfgen_family;
    rec[NFB_F_QUEUE] = ntohs(nfg->res_id);

    nfb_attr_for_each(attr, ap, alen) {
        uint16_t type = nfb_attr_type(attr);
        uint16_t len = nfb_attr_len(attr);
        const char *p = nfb_attr_data(attr);
        uint32_t off = (uint32_t)(p - base);

        if (type > NFQA_MAX)
            continue;
        if (nfb_nfqa_u32[type]) {
            if (len < 4)
                continue;
            rec[nfb_nfqa_u32[type]] = nfb_be32(p);
        } else switch (type) {
        case NFQA_PACKET_HDR: {
            const struct nfqnl_msg_packet_hdr *ph = (const void *)p;
            if (len < sizeof(*ph))
                continue;
            rec[NFB_F_ID] = ntohl(ph->packet_id);
            rec[NFB_F_HWPROTO] = ntohs(ph->hw_protocol);
            rec[NFB_F_HOOK] = ph->hook;
            break;
        }
        case NFQA_TIMESTAMP:
            if (!nfb_rec_timestamp(rec, p, len))
                continue;
            break;
        case NFQA_HWADDR:
            if (!NFB_REC_HWADDR(rec, p, len, base, struct nfqnl_msg_packet_hw))
                continue;
            break;
        case NFQA_PAYLOAD:
            nfb_rec_range(rec, NFB_F_PAYLOAD_OFF, off, len);
            break;
        case NFQA_L2HDR:
            nfb_rec_range(rec, NFB_F_L2HDR_OFF, off, len);
            break;
        case NFQA_SECCTX:   /* NUL-terminated in recent kernels */
            nfb_rec_string(rec, NFB_F_SECCTX_OFF, p, off, len);
            break;
        case NFQA_CT:
            nfb_rec_range(rec, NFB_F_CT_OFF, off, len);
            break;
        case NFQA_EXP:
            nfb_rec_range(rec, NFB_F_EXP_OFF, off, len);
            break;
        case NFQA_VLAN:
            nfb_rec_vlan(rec, attr, NFQA_VLAN_PROTO, NFQA_VLAN_TCI);
            break;
        default:
            continue;
        }
        attrs |= nfb_nfqa_bit[type];
    }
    rec[NFB_F_ATTRS] = attrs;
    return 1;
}

int nfb_q_recv(struct nfb_q *q)
{
    return nfb_rx_recv(&q->rx, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET,
                       nfb_q_parse_packet, NULL);
}

/* Whether packet id a came after b (ids wrap around at 2**32). */
static inline int nfb_q_id_after(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b) > 0;
}

int nfb_q_take(struct nfb_q *q)
{
    int i, fresh = 0;

    for (i = 0; i < q->rx.npkts; i++) {
        uint32_t id = q->rx.recs[(size_t)i * NFB_F_COUNT + NFB_F_ID];
        if (!q->have_id || nfb_q_id_after(id, q->last_id)) {
            q->last_id = id;
            q->have_id = 1;
            fresh++;
        }
    }
    q->packets += (uint64_t)fresh;
    q->rx.held = 0;
    return fresh;
}

/* ---- configuration ------------------------------------------------------ */

struct nfb_qcfg {
    int cmd;
    int copy_mode;
    uint32_t copy_range;
    int64_t max_len;
    uint32_t flags_mask;
    uint32_t flags;
};

int nfb_q_config(struct nfb_q *q, const struct nfb_qcfg *cfg, int timeout_ms,
                 int *failed_step)
{
    char buf[4 * 256];
    size_t off = 0;
    uint32_t seqs[4];
    int steps[4], results[4];
    int nmsg = 0, rc;
    struct nlmsghdr *nlh;
    struct nfb_txn t;

    memset(buf, 0, sizeof(buf));
#define NFB_MSG(step) do {                                                \
        nlh = nfq_nlmsg_put(buf + off, NFQNL_MSG_CONFIG, q->queue);       \
        nlh->nlmsg_flags |= NLM_F_ACK;                                    \
        nlh->nlmsg_seq = seqs[nmsg] = ++q->rx.seq;                        \
        steps[nmsg] = (step);                                             \
    } while (0)
#define NFB_END() do { off += NLMSG_ALIGN(nlh->nlmsg_len); nmsg++; } while (0)
    if (cfg->cmd) {
        NFB_MSG(NFB_STEP_BIND);
        nfq_nlmsg_cfg_put_cmd(nlh, AF_UNSPEC, cfg->cmd);
        /* the copy mode in the bind request itself: the kernel creates a
         * queue with copy mode NONE and drops, uncounted, every packet that
         * reaches it before its copy mode is set (a second request would
         * leave that open while the first one is answered; the kernel
         * ignores a bad copy mode, so no error is misattributed) */
        if (cfg->cmd == NFQNL_CFG_CMD_BIND && cfg->copy_mode >= 0)
            nfq_nlmsg_cfg_put_params(nlh, cfg->copy_mode, cfg->copy_range);
        NFB_END();
    }
    if (cfg->copy_mode >= 0 && cfg->cmd != NFQNL_CFG_CMD_BIND) {
        NFB_MSG(NFB_STEP_PARAMS);
        nfq_nlmsg_cfg_put_params(nlh, cfg->copy_mode, cfg->copy_range);
        NFB_END();
    }
    /* the flags before the length: the kernel applies each request in
     * turn, and a packet that finds the queue full in between meets the
     * flags already asked for (close() sets fail-open, then max_len 0: the
     * other way round, a packet arriving between the two would be dropped) */
    if (cfg->flags_mask) {
        NFB_MSG(NFB_STEP_FLAGS);
        mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(cfg->flags));
        mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(cfg->flags_mask));
        NFB_END();
    }
    if (cfg->max_len >= 0) {
        NFB_MSG(NFB_STEP_QMAXLEN);
        nfq_nlmsg_cfg_put_qmaxlen(nlh, (uint32_t)cfg->max_len);
        NFB_END();
    }
#undef NFB_MSG
#undef NFB_END
    /* packets that arrive meanwhile are stashed for the next nfb_q_recv() */
    nfb_txn_init(&t, nmsg, seqs, results);
    t.stash = 1;
    rc = nfb_rx_transact(&q->rx, &t, buf, off, timeout_ms);
    return nfb_txn_first_error(rc, &t, steps, failed_step);
}

/* ---- verdicts ------------------------------------------------------------ */

/* labels: with NFB_VF_LABELS, 32 bytes: the labels (CTA_LABELS) then their
 * mask (CTA_LABELS_MASK), 4 host-order u32 words each as the kernel reads them */
static size_t nfb_build_verdict(char *buf, uint16_t queue, uint32_t id,
                                uint32_t verdict, int vflags, uint32_t mark,
                                uint32_t connmark, const char *labels,
                                const char *payload, uint32_t payload_len)
{
    struct nlmsghdr *nlh;

    nlh = nfq_nlmsg_put(buf, (vflags & NFB_VF_BATCH) ? NFQNL_MSG_VERDICT_BATCH
                                                      : NFQNL_MSG_VERDICT,
                        queue);
    nfq_nlmsg_verdict_put(nlh, (int)id, (int)verdict);
    if (vflags & NFB_VF_MARK)
        nfq_nlmsg_verdict_put_mark(nlh, mark);
    if (vflags & (NFB_VF_CONNMARK | NFB_VF_LABELS)) {
        /* applied by the kernel's ctnetlink glue (CONFIG_NETFILTER_NETLINK_GLUE_CT) */
        struct nlattr *nest = mnl_attr_nest_start(nlh, NFQA_CT);
        if (vflags & NFB_VF_CONNMARK)
            mnl_attr_put_u32(nlh, CTA_MARK, htonl(connmark));
        if ((vflags & NFB_VF_LABELS) && labels) {
            mnl_attr_put(nlh, CTA_LABELS, NFB_LABELS_LEN, labels);
            mnl_attr_put(nlh, CTA_LABELS_MASK, NFB_LABELS_LEN, labels + NFB_LABELS_LEN);
        }
        mnl_attr_nest_end(nlh, nest);
    }
    if (vflags & NFB_VF_PAYLOAD)
        nfq_nlmsg_verdict_put_pkt(nlh, payload, payload_len);
    return NLMSG_ALIGN(nlh->nlmsg_len);
}

static size_t nfb_verdict_size(int vflags, uint32_t payload_len)
{
    size_t s = NFB_VMSG_SMALL;
    if (vflags & NFB_VF_PAYLOAD)
        s += NLA_ALIGN(payload_len) + NLA_HDRLEN;
    return s;
}

int nfb_q_flush(struct nfb_q *q)
{
    int rc;
    if (!q->slen)
        return 0;
    rc = nfb_rx_send(&q->rx, q->sbuf, q->slen);
    q->slen = 0;
    return rc;
}

int nfb_q_put_verdict_ct(struct nfb_q *q, uint32_t id, uint32_t verdict, int vflags,
                         uint32_t mark, uint32_t connmark, const char *labels,
                         const char *payload, uint32_t payload_len);

int nfb_q_put_verdict(struct nfb_q *q, uint32_t id, uint32_t verdict, int vflags,
                      uint32_t mark, uint32_t connmark, const char *payload,
                      uint32_t payload_len)
{
    return nfb_q_put_verdict_ct(q, id, verdict, vflags & ~NFB_VF_LABELS, mark, connmark,
                                NULL, payload, payload_len);
}

/* One verdict message for packet ``id`` of queue ``queue`` into the send
 * buffer (one socket may be bound to several queues). */
static int nfb_q_put_verdict_to(struct nfb_q *q, uint16_t queue, uint32_t id,
                                uint32_t verdict, int vflags, uint32_t mark,
                                uint32_t connmark, const char *labels,
                                const char *payload, uint32_t payload_len)
{
    size_t need;
    int rc;

    if ((vflags & NFB_VF_PAYLOAD) && payload_len > NFB_MAX_PAYLOAD)
        return -EMSGSIZE;
    need = nfb_verdict_size(vflags, payload_len);
    if (q->slen + need > NFB_SBUF_SIZE) {
        rc = nfb_q_flush(q);
        if (rc < 0)
            return rc;
    }
    q->slen += nfb_build_verdict(q->sbuf + q->slen, queue, id, verdict, vflags,
                                 mark, connmark, labels, payload, payload_len);
    return 0;
}

int nfb_q_put_verdict_ct(struct nfb_q *q, uint32_t id, uint32_t verdict, int vflags,
                         uint32_t mark, uint32_t connmark, const char *labels,
                         const char *payload, uint32_t payload_len)
{
    return nfb_q_put_verdict_to(q, q->queue, id, verdict, vflags, mark, connmark, labels,
                                payload, payload_len);
}

/* Count one verdict given (by_verdict: NF_QUEUE whatever the target queue). */
static inline void nfb_q_count(struct nfb_q *q, uint32_t v)
{
    v &= NF_VERDICT_MASK;
    q->by_verdict[v <= NF_MAX_VERDICT ? v : NF_DROP]++;
}

/* Queue the verdicts decided in vbuf[0..n) (recs: the batch's records) and
 * mark each entry queued NFB_V_DONE.  Runs of one plain verdict become one
 * kernel batch verdict unless older_pending is set (a packet of an earlier
 * batch still waits for its verdict: a batch verdict would cover it too);
 * an entry without a verdict yet (NFB_V_DEFERRED) ends batching for the
 * entries after it.  Entries already done (NFB_V_DONE, _CLOSED, _TIMEOUT) are
 * skipped, so calling it again queues nothing twice. */
static int nfb_q_queue_decided(struct nfb_q *q, const uint32_t *recs, int64_t *vbuf,
                               int n, int older_pending)
{
    int i, k, rc;
    int blocked = older_pending;
    int run_len = 0, run_first = 0;
    uint32_t run_verdict = 0, run_last_id = 0;
    uint16_t run_queue = 0;

#define NFB_FLUSH_RUN(upto) do {                                          \
        if (run_len) {                                                    \
            rc = nfb_q_put_verdict_to(q, run_queue, run_last_id,          \
                                      run_verdict,                        \
                                      run_len > 1 ? NFB_VF_BATCH : 0,     \
                                      0, 0, NULL, NULL, 0);               \
            if (rc < 0)                                                   \
                return rc;                                                \
            if (run_len > 1)                                              \
                q->batch_verdicts++;                                      \
            for (k = run_first; k < (upto); k++)                          \
                if (vbuf[k] >= 0)                                         \
                    vbuf[k] = NFB_V_DONE;                                 \
            run_len = 0;                                                  \
        }                                                                 \
    } while (0)

    for (i = 0; i < n; i++) {
        int64_t v = vbuf[i];
        uint32_t id = recs[(size_t)i * NFB_F_COUNT + NFB_F_ID];
        /* each packet's own queue: a socket may be bound to several, and a
         * run (a kernel batch verdict) covers one queue */
        uint16_t qn = (uint16_t)recs[(size_t)i * NFB_F_COUNT + NFB_F_QUEUE];
        if (v == NFB_V_DEFERRED) {  /* no verdict yet: later ones can't be batched */
            NFB_FLUSH_RUN(i);
            blocked = 1;
            continue;
        }
        if (v < 0)
            continue;
        nfb_q_count(q, (uint32_t)v);
        if (blocked) {
            rc = nfb_q_put_verdict_to(q, qn, id, (uint32_t)v, 0, 0, 0, NULL, NULL, 0);
            if (rc < 0)
                return rc;
            vbuf[i] = NFB_V_DONE;
            continue;
        }
        if (run_len && ((uint32_t)v != run_verdict || qn != run_queue))
            NFB_FLUSH_RUN(i);
        if (!run_len)
            run_first = i;
        run_verdict = (uint32_t)v;
        run_queue = qn;
        run_last_id = id;
        run_len++;
    }
    NFB_FLUSH_RUN(n);
#undef NFB_FLUSH_RUN
    return 0;
}

int nfb_q_settle(struct nfb_q *q, const uint32_t *recs, int64_t *vbuf, int n,
                 int older_pending)
{
    int rc = nfb_q_queue_decided(q, recs, vbuf, n, older_pending);
    if (rc < 0)
        return rc;
    return nfb_q_flush(q);
}

int nfb_q_put_verdict_at(struct nfb_q *q, const uint32_t *recs, int64_t *vbuf, int i,
                         int older_pending, uint32_t verdict, int vflags, uint32_t mark,
                         uint32_t connmark, const char *labels, const char *payload,
                         uint32_t payload_len)
{
    int rc;

    if (vbuf[i] != NFB_V_DEFERRED)
        return -EALREADY;
    if ((vflags & NFB_VF_PAYLOAD) && payload_len > NFB_MAX_PAYLOAD)
        return -EMSGSIZE;
    /* the verdicts decided before it go first: the kernel reinjects in order */
    rc = nfb_q_queue_decided(q, recs, vbuf, i, older_pending);
    if (rc < 0)
        return rc;
    rc = nfb_q_put_verdict_to(q, (uint16_t)recs[(size_t)i * NFB_F_COUNT + NFB_F_QUEUE],
                              recs[(size_t)i * NFB_F_COUNT + NFB_F_ID], verdict, vflags,
                              mark, connmark, labels, payload, payload_len);
    if (rc < 0)
        return rc;
    nfb_q_count(q, verdict);
    vbuf[i] = NFB_V_DONE;
    return 0;
}

int nfb_q_send_verdict_ct(int fd, uint16_t queue, uint32_t id, uint32_t verdict,
                          int vflags, uint32_t mark, uint32_t connmark,
                          const char *labels, const char *payload, uint32_t payload_len);

int nfb_q_send_verdict_at(int fd, uint16_t queue, int64_t *slot, uint32_t id,
                          uint32_t verdict, int vflags, uint32_t mark, uint32_t connmark,
                          const char *labels, const char *payload, uint32_t payload_len)
{
    int64_t expect = NFB_V_DEFERRED;
    int rc;

    if ((vflags & NFB_VF_PAYLOAD) && payload_len > NFB_MAX_PAYLOAD)
        return -EMSGSIZE;
    if (!__atomic_compare_exchange_n(slot, &expect, NFB_V_DONE, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return -EALREADY;
    rc = nfb_q_send_verdict_ct(fd, queue, id, verdict, vflags, mark, connmark, labels,
                               payload, payload_len);
    if (rc < 0)     /* not sent: the packet still waits for its verdict */
        __atomic_store_n(slot, NFB_V_DEFERRED, __ATOMIC_RELEASE);
    return rc;
}

int nfb_q_send_timeout_at(int fd, uint16_t queue, int64_t *slot, uint32_t id,
                          uint32_t verdict)
{
    int64_t expect = NFB_V_DEFERRED;
    int rc;

    /* NFB_V_TIMEOUT at once, in the same step that takes the packet: a
     * verdict racing the deadline then learns why it came too late */
    if (!__atomic_compare_exchange_n(slot, &expect, NFB_V_TIMEOUT, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return -EALREADY;
    rc = nfb_q_send_verdict_ct(fd, queue, id, verdict, 0, 0, 0, NULL, NULL, 0);
    if (rc < 0)     /* not sent: the packet still waits for its verdict */
        __atomic_store_n(slot, NFB_V_DEFERRED, __ATOMIC_RELEASE);
    return rc;
}

int nfb_q_send_verdict(int fd, uint16_t queue, uint32_t id, uint32_t verdict,
                       int vflags, uint32_t mark, uint32_t connmark,
                       const char *payload, uint32_t payload_len)
{
    return nfb_q_send_verdict_ct(fd, queue, id, verdict, vflags & ~NFB_VF_LABELS, mark,
                                 connmark, NULL, payload, payload_len);
}

int nfb_q_send_verdict_ct(int fd, uint16_t queue, uint32_t id, uint32_t verdict,
                          int vflags, uint32_t mark, uint32_t connmark,
                          const char *labels, const char *payload, uint32_t payload_len)
{
    char small[NFB_VMSG_SMALL];
    char *buf = small;
    size_t len;
    ssize_t r;

    if ((vflags & NFB_VF_PAYLOAD) && payload_len > NFB_MAX_PAYLOAD)
        return -EMSGSIZE;
    if (vflags & NFB_VF_PAYLOAD) {
        buf = malloc(nfb_verdict_size(vflags, payload_len));
        if (!buf)
            return -ENOMEM;
    }
    memset(buf, 0, NFB_VMSG_SMALL);
    len = nfb_build_verdict(buf, queue, id, verdict, vflags, mark, connmark, labels,
                            payload, payload_len);
    do {
        r = send(fd, buf, len, 0);
    } while (r < 0 && errno == EINTR);
    if (buf != small)
        free(buf);
    return r < 0 ? -errno : 0;
}
