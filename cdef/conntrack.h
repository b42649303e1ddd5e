/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * nfbind._conntrack: the connection tracking table (libnetfilter_conntrack).
 *
 * Requests are built with libnetfilter_conntrack's objects (nf_conntrack,
 * nf_expect, nfct_filter_dump) and its libmnl-based nfct_nlmsg_build(),
 * nfexp_nlmsg_build() and nfct_nlmsg_build_filter(), and sent over a
 * NETLINK_NETFILTER socket nfbind owns (so one code path serves every
 * network namespace, and the dying/unconfirmed tables and per-CPU
 * statistics, which the object API has no call for, are just other message
 * types).  Answers (dumps, events, single flows) are received by the core's
 * batcher and transaction and parsed by the core's CTA_* parser into struct
 * nfb_ct_rec records (cdef/core.h, included, which also has the kernel's
 * conntrack constants), one per flow, many per call: Python turns a batch of
 * records into Flows with one struct.iter_unpack().  The event filter is
 * libnetfilter_conntrack's BPF (nfct_filter_*).
 */

/* ---- libnetfilter_conntrack ------------------------------------------------ */
/* enum nf_conntrack_msg_type: the event types */
#define NFCT_T_NEW ...
#define NFCT_T_UPDATE ...
#define NFCT_T_DESTROY ...
#define NFCT_T_ALL ...

/* connlabel.conf: label names <-> bits */
struct nfct_labelmap;
const char *nfct_labels_get_path(void);
struct nfct_labelmap *nfct_labelmap_new(const char *mapfile);
void nfct_labelmap_destroy(struct nfct_labelmap *map);
const char *nfct_labelmap_get_name(struct nfct_labelmap *m, unsigned int bit);
int nfct_labelmap_get_bit(struct nfct_labelmap *m, const char *name);

/* the kernel-side (BPF) event filter */
struct nfct_filter;
struct nfct_filter *nfct_filter_create(void);
void nfct_filter_destroy(struct nfct_filter *filter);
struct nfct_filter_ipv4 { uint32_t addr; uint32_t mask; };
struct nfct_filter_ipv6 { uint32_t addr[4]; uint32_t mask[4]; };
struct nfct_filter_dump_mark { uint32_t val; uint32_t mask; };
enum nfct_filter_attr {
    NFCT_FILTER_L4PROTO,
    NFCT_FILTER_SRC_IPV4,
    NFCT_FILTER_DST_IPV4,
    NFCT_FILTER_SRC_IPV6,
    NFCT_FILTER_DST_IPV6,
    NFCT_FILTER_MARK,
    ...
};
void nfct_filter_add_attr(struct nfct_filter *filter, const enum nfct_filter_attr attr,
                          const void *value);
void nfct_filter_add_attr_u32(struct nfct_filter *filter, const enum nfct_filter_attr attr,
                              const uint32_t value);
int nfct_filter_attach(int fd, struct nfct_filter *filter);

/* ---- requests ------------------------------------------------------------ */

/* What a request carries (get, create, update, delete).  set: NFB_S_* */
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
    ...;
};

#define NFB_S_ORIG ...
#define NFB_S_REPLY ...
#define NFB_S_STATUS ...
#define NFB_S_TIMEOUT ...
#define NFB_S_MARK ...
#define NFB_S_ZONE ...
#define NFB_S_LABELS ...
#define NFB_S_LABELS_MASK ...
#define NFB_S_HELPER ...
#define NFB_S_STATE ...
#define NFB_S_ID ...
#define NFB_S_SNAT ...
#define NFB_S_DNAT ...
#define NFB_S_SNAT_PORT ...
#define NFB_S_DNAT_PORT ...
#define NFB_S_SETUP_REPLY ...

/* An expectation to create or delete. */
struct nfb_exp_spec {
    uint32_t set;           /* NFB_ES_* */
    uint8_t family;
    uint16_t zone;
    struct nfb_ct_tuple master;
    struct nfb_ct_tuple expected;
    struct nfb_ct_tuple mask;
    uint32_t timeout;
    uint32_t flags;
    uint32_t klass;
    char helper[16];
    ...;
};

#define NFB_ES_MASTER ...
#define NFB_ES_EXPECTED ...
#define NFB_ES_MASK ...
#define NFB_ES_TIMEOUT ...
#define NFB_ES_ZONE ...
#define NFB_ES_FLAGS ...
#define NFB_ES_CLASS ...
#define NFB_ES_HELPER ...

/* Dump and flush filters the kernel applies.  set: NFB_DF_* */
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
    ...;
};
#define NFB_DF_MARK ...
#define NFB_DF_STATUS ...
#define NFB_DF_ZONE ...

/* The kernel's CTA_FILTER_F_* (tuple fields a filtered dump or flush
 * compares; not in the userspace headers, ABI since Linux 5.8). */
#define NFB_CTF_IP_SRC ...
#define NFB_CTF_IP_DST ...
#define NFB_CTF_TUPLE_ZONE ...
#define NFB_CTF_PROTO_NUM ...
#define NFB_CTF_PROTO_SRC_PORT ...
#define NFB_CTF_PROTO_DST_PORT ...
#define NFB_CTF_PROTO_ICMP_TYPE ...
#define NFB_CTF_PROTO_ICMP_CODE ...
#define NFB_CTF_PROTO_ICMP_ID ...
#define NFB_CTF_PROTO_ICMPV6_TYPE ...
#define NFB_CTF_PROTO_ICMPV6_CODE ...
#define NFB_CTF_PROTO_ICMPV6_ID ...

/* A request socket (or an event socket) with its receive buffers and the
 * current batch; its counters are the core's (rx). */
struct nfb_ct {
    struct nfb_rx rx;
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
    ...;
};

#define NFB_CT_BUFSIZE ...

/* modes of nfb_ct_recv_answer() */
#define NFB_M_RECORDS ...
#define NFB_M_RAW ...

struct nfb_ct *nfb_ct_new(int fd, int nslots);
void nfb_ct_free(struct nfb_ct *c);

/* Build requests into buf (NFB_CT_BUFSIZE bytes).  Return the length, or -errno. */
int nfb_ct_build_simple(char *buf, uint8_t subsys, uint8_t msg, uint16_t flags,
                        uint8_t family, uint16_t res_id);
int nfb_ct_build_filtered(char *buf, uint8_t msg, uint16_t flags,
                          const struct nfb_ct_dumpf *f);
int nfb_ct_build(char *buf, uint8_t msg, uint16_t flags, const struct nfb_ct_spec *s);
/* A request naming one flow by its original tuple or (by_reply) its reply
 * tuple, with the tuple's directional zone and (when not 0) the zone. */
int nfb_ct_build_lookup(char *buf, uint8_t msg, uint16_t flags, uint8_t family,
                        const struct nfb_ct_tuple *t, int by_reply, uint16_t zone);
int nfb_exp_build(char *buf, uint8_t msg, uint16_t flags, const struct nfb_exp_spec *s);

/* Send one request (its sequence number is set here).  0 or -errno. */
int nfb_ct_send(struct nfb_ct *c, char *buf, uint32_t len);

/* Receive the answer to the last request until it is complete (c->done,
 * c->error) or max_items records/messages are in the batch.  Waits up to
 * timeout_ms for each datagram.  Returns the number of items in the batch,
 * or -errno (-ETIMEDOUT). */
int nfb_ct_recv_answer(struct nfb_ct *c, int mode, int max_items, int timeout_ms);

/* Events: drain what is readable now (never blocks) into records.
 * Returns the number of events, 0, or -errno (-ENOBUFS counted). */
int nfb_ct_recv_events(struct nfb_ct *c);
/* The same, keeping the messages as they are (data + moffs): expectation
 * events, which Python parses. */
int nfb_ct_recv_raw_events(struct nfb_ct *c);
