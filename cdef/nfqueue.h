/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind._nfqueue: the NFQUEUE channel.
 *
 * Messages are built with libnetfilter_queue's libmnl-based nfq_nlmsg_* API.
 * Packets are parsed by nfbind's own C helper (cdef/nfqueue.c) against the
 * kernel's NFQA_* enum, because libnetfilter_queue 1.0.5's nfq_nlmsg_parse()
 * drops NFQA_L2HDR, NFQA_PRIORITY and NFQA_VLAN and rejects NFQA_SECCTX.
 * Receiving, the configuration's wait for acknowledgements, the packet
 * record layout and the constants the channels share are the core's
 * (cdef/core.h, included).
 */

/* <linux/netfilter/nfnetlink_queue.h> */
#define NFQNL_MSG_VERDICT_BATCH ...

#define NFQNL_CFG_CMD_BIND ...
#define NFQNL_CFG_CMD_UNBIND ...
#define NFQA_CFG_CMD ...
#define NFQA_CFG_PARAMS ...
#define NFQA_CFG_QUEUE_MAXLEN ...
#define NFQA_CFG_MASK ...
#define NFQA_CFG_FLAGS ...

#define NFQA_PACKET_HDR ...
#define NFQA_MARK ...
#define NFQA_HWADDR ...
#define NFQA_PAYLOAD ...
#define NFQA_CT ...
#define NFQA_CT_INFO ...
#define NFQA_CAP_LEN ...
#define NFQA_SKB_INFO ...
#define NFQA_EXP ...
#define NFQA_VLAN ...
#define NFQA_L2HDR ...
#define NFQA_PRIORITY ...

#define NFQA_SKB_CSUMNOTREADY ...
#define NFQA_SKB_GSO ...
#define NFQA_SKB_CSUM_NOTVERIFIED ...

/* <linux/netfilter.h>: a verdict's own bits, and the highest verdict */
#define NF_VERDICT_MASK ...
#define NF_MAX_VERDICT ...

/* The kernel clamps copy_range to this; an NFQA_PAYLOAD carries at most it. */
#define NFB_MAX_PAYLOAD ...

/* A batch's verdict array holds one int64 per packet: its verdict, decided
 * and not yet queued, or one of these. */
#define NFB_V_DONE ...      /* has its verdict (queued or sent) */
#define NFB_V_DEFERRED ...  /* no verdict yet */
#define NFB_V_CLOSED ...    /* given the default verdict by close() */
#define NFB_V_TIMEOUT ...   /* given on_timeout at its deadline (verdict_timeout) */

/* Flags of nfb_q_put_verdict(). */
#define NFB_VF_MARK ...
#define NFB_VF_CONNMARK ...
#define NFB_VF_PAYLOAD ...
#define NFB_VF_BATCH ...
#define NFB_VF_LABELS ...     /* connection labels in NFQA_CT (the _ct calls) */
#define NFB_LABELS_LEN ...    /* bytes of labels, and of their mask */

struct nfb_q {
    struct nfb_rx rx;
    uint16_t queue;
    uint64_t batch_verdicts;
    /* verdicts given through nfb_q_settle() and nfb_q_put_verdict_at(), by
     * verdict (NF_DROP .. NF_STOP; NF_QUEUE whatever the target queue) */
    uint64_t by_verdict[...];
    uint64_t packets;       /* packets taken, each id once */
    uint32_t last_id;       /* the highest id taken */
    int have_id;            /* ... once one was */
    struct nfb_hot *hot;    /* nfb_q_hot() */
    ...;
};

struct nfb_qcfg {
    int cmd;               /* NFQNL_CFG_CMD_BIND / _UNBIND, or 0 for none */
    int copy_mode;         /* NFQNL_COPY_*, or -1: unchanged */
    uint32_t copy_range;
    int64_t max_len;       /* -1: unchanged */
    uint32_t flags_mask;   /* 0: unchanged */
    uint32_t flags;
};

struct nfb_q *nfb_q_new(int fd, uint16_t queue, uint32_t slot_size, int nslots);
void nfb_q_free(struct nfb_q *q);
int nfb_q_resize(struct nfb_q *q, uint32_t slot_size, int nslots);

/* Configure the queue; waits for the kernel's acknowledgements (timeout_ms).
 * Returns 0, or -errno of the first step that failed (*failed_step tells
 * which: NFB_STEP_BIND, _PARAMS, _QMAXLEN or _FLAGS). */
int nfb_q_config(struct nfb_q *q, const struct nfb_qcfg *cfg, int timeout_ms,
                 int *failed_step);

/* Drain what is readable now into one batch; never blocks.  Returns the
 * number of packets parsed (0: nothing to read), or -errno (-ENOBUFS: the
 * kernel dropped messages; q->overruns counts them).  The batch stays held
 * (rx.held) until nfb_q_take(): until then each call hands it out again. */
int nfb_q_recv(struct nfb_q *q);
/* The hot fields of the current batch's packets into q->hot, one struct
 * nfb_hot per packet, the packet id in extra.  Returns the packets, or
 * -ENOMEM. */
int nfb_q_hot(struct nfb_q *q);
/* The batch handed out is kept by the caller: count its packets (each id
 * once: q->packets, q->last_id) and let the next nfb_q_recv() read on.
 * Returns how many of its packets were not taken before. */
int nfb_q_take(struct nfb_q *q);

/* Append one verdict message to the send buffer (flushing when full). */
int nfb_q_put_verdict(struct nfb_q *q, uint32_t id, uint32_t verdict, int vflags,
                      uint32_t mark, uint32_t connmark, const char *payload,
                      uint32_t payload_len);
/* The verdicts decided in vbuf[0..n) of a batch whose records are recs:
 * queued (each entry becoming NFB_V_DONE as it is) and sent.  Runs of one
 * plain verdict become one kernel batch verdict unless older_pending is set
 * (a packet of an earlier batch still waits for its verdict); an entry
 * NFB_V_DEFERRED ends batching for the entries after it.  Calling it again
 * sends nothing twice.  0 or -errno. */
int nfb_q_settle(struct nfb_q *q, const uint32_t *recs, int64_t *vbuf, int n,
                 int older_pending);
/* Entry i's verdict with a mark, connmark or payload, queued after the
 * verdicts decided before it (the kernel reinjects in order); vbuf[i]
 * becomes NFB_V_DONE.  -EALREADY when vbuf[i] was not NFB_V_DEFERRED. */
int nfb_q_put_verdict_at(struct nfb_q *q, const uint32_t *recs, int64_t *vbuf, int i,
                         int older_pending, uint32_t verdict, int vflags, uint32_t mark,
                         uint32_t connmark, const char *labels, const char *payload,
                         uint32_t payload_len);
int nfb_q_flush(struct nfb_q *q);

/* Send the verdict of the packet whose verdict slot is *slot right away
 * (thread-safe: no shared buffer): the slot goes from NFB_V_DEFERRED to
 * NFB_V_DONE atomically (-EALREADY when it was not NFB_V_DEFERRED), and
 * back when the send failed. */
int nfb_q_send_verdict_at(int fd, uint16_t queue, int64_t *slot, uint32_t id,
                          uint32_t verdict, int vflags, uint32_t mark, uint32_t connmark,
                          const char *labels, const char *payload, uint32_t payload_len);

/* The same for a packet whose deadline passed: the plain verdict goes out
 * and the slot becomes NFB_V_TIMEOUT (-EALREADY: it had a verdict). */
int nfb_q_send_timeout_at(int fd, uint16_t queue, int64_t *slot, uint32_t id,
                          uint32_t verdict);

/* Build and send one verdict right away; thread-safe (no shared buffer). */
int nfb_q_send_verdict(int fd, uint16_t queue, uint32_t id, uint32_t verdict,
                       int vflags, uint32_t mark, uint32_t connmark,
                       const char *payload, uint32_t payload_len);

/* The same two with connection labels: with NFB_VF_LABELS, labels holds
 * 2 * NFB_LABELS_LEN bytes, the labels then their mask (host-order u32
 * words), sent as CTA_LABELS and CTA_LABELS_MASK in the verdict's NFQA_CT. */
int nfb_q_put_verdict_ct(struct nfb_q *q, uint32_t id, uint32_t verdict, int vflags,
                         uint32_t mark, uint32_t connmark, const char *labels,
                         const char *payload, uint32_t payload_len);
int nfb_q_send_verdict_ct(int fd, uint16_t queue, uint32_t id, uint32_t verdict,
                          int vflags, uint32_t mark, uint32_t connmark,
                          const char *labels, const char *payload, uint32_t payload_len);


