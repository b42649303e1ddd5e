/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * libFuzzer target: nfbind's NFQUEUE receive path (cdef/nfqueue.c and the
 * core's batcher, transaction and conntrack-by-packet request in
 * cdef/core.c), compiled from the same sources as the nfbind._nfqueue module.
 *
 * One input is the bytes of what a netlink socket handed over: one or more
 * netlink messages, well-formed or not.  It goes through
 *   1. nfb_rx_parse() with nfb_q_parse_packet() over an exact-size copy;
 *   2. nfb_q_recv() over a datagram socket, as one datagram;
 *   3. nfb_q_recv() with slots too small for it (MSG_TRUNC, the cut
 *      message's nlmsg_len clamped);
 *   4. nfb_q_recv() with the input cut into datagrams at each message's
 *      claimed nlmsg_len (unaligned, short and long datagrams compacted);
 *   5. nfb_q_config(), whose wait for acknowledgements reads the same
 *      datagrams (NLMSG_ERROR matched by sequence, packets kept in the
 *      stash), then nfb_q_recv() handing out the stash;
 * and for every parsed packet, its NFQA_PAYLOAD bytes through
 * nfb_l4_csum_fill() and nfb_put_pkt_tuple() (the conntrack-by-packet
 * request).  Every record's (offset, length) ranges are checked against
 * the batch.
 */
#include "nfqueue.c"
#include "fuzz_common.h"

#define FZ_PKT_TYPE ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)

static struct nfb_rx fz_rx;
static struct fz_pair fz_big, fz_small, fz_split_pair;
static struct nfb_q *fz_q_big, *fz_q_small, *fz_q_split;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    FZ_CHECK(nfb_rx_init(&fz_rx, -1, 4096, 2) == 0);
    fz_pair_open(&fz_big);
    fz_pair_open(&fz_small);
    fz_pair_open(&fz_split_pair);
    fz_q_big = nfb_q_new(fz_big.rfd, 0, 65536, 4);
    fz_q_small = nfb_q_new(fz_small.rfd, 0, 64, 4);
    fz_q_split = nfb_q_new(fz_split_pair.rfd, 0, 8192, FZ_BURST);
    FZ_CHECK(fz_q_big && fz_q_small && fz_q_split);
    return 0;
}

/* The payload of each record through the functions that read packet bytes. */
static void fz_packet_bytes(const struct nfb_rx *rx)
{
    int i;
    for (i = 0; i < rx->npkts; i++) {
        const uint32_t *rec = rx->recs + (size_t)i * NFB_F_COUNT;
        uint32_t off = rec[NFB_F_PAYLOAD_OFF], len = rec[NFB_F_PAYLOAD_LEN];
        char *copy;
        char req[1024];
        struct nlmsghdr *nlh;
        uint8_t family = 0;

        if (!(rec[NFB_F_ATTRS] & NFB_A_PAYLOAD))
            continue;
        copy = malloc(len ? len : 1);
        FZ_CHECK(copy != NULL);
        memcpy(copy, rx->data + off, len);
        nfb_l4_csum_fill(copy, len);
        memset(req, 0, sizeof(req));
        nlh = mnl_nlmsg_put_header(req);
        mnl_nlmsg_put_extra_header(nlh, sizeof(struct nfgenmsg));
        if (nfb_put_pkt_tuple(nlh, (const unsigned char *)copy, len, &family) == 0)
            FZ_CHECK(nlh->nlmsg_len <= sizeof(req));
        free(copy);
    }
}

static void fz_check(const struct nfb_rx *rx, int rc)
{
    FZ_CHECK(rc >= 0 || rc == -ENOMEM);
    if (rc <= 0)
        return;
    FZ_CHECK(rc == rx->npkts);
    fz_check_packet_recs(rx->data, rx->data_len, rx->recs, rx->npkts);
    fz_packet_bytes(rx);
}

/* Receive until the socket is drained (bounded). */
static void fz_recv_all(void *arg)
{
    struct nfb_q *q = arg;
    int k;
    for (k = 0; k < 64; k++) {
        int rc = nfb_q_recv(q);
        fz_check(&q->rx, rc);
        if (rc > 0)
            nfb_q_take(q);  /* kept, as NfQueue does: the next receive reads on */
        if (rc <= 0 && !q->rx.stash_len)
            break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static size_t off[FZ_MAX_DGRAMS], len[FZ_MAX_DGRAMS];
    char *copy = malloc(size ? size : 1);
    int rc, ndg, next;

    FZ_CHECK(copy != NULL);
    memcpy(copy, data, size);

    /* 1. the parser over exactly the input's bytes */
    rc = nfb_rx_parse(&fz_rx, copy, size, FZ_PKT_TYPE, nfb_q_parse_packet, NULL);
    FZ_CHECK(rc >= 0);
    fz_check(&fz_rx, rc);
    free(copy);

    /* 2-4. one datagram into large slots, into 64-byte slots (cut), and the
     * datagrams as the headers claim them */
    ndg = fz_recv_paths(data, size, off, len, fz_recv_all, &fz_big, fz_q_big,
                        &fz_small, fz_q_small, &fz_split_pair, fz_q_split);

    /* 5. the same datagrams read while waiting for a configuration ack;
     * sequence numbers restart at 1 so an input can answer the request */
    next = 0;
    while (next < ndg) {
        struct nfb_qcfg cfg = { .cmd = NFQNL_CFG_CMD_BIND, .copy_mode = -1,
                                .max_len = -1 };
        int step = 0;
        if (!fz_send_burst(&fz_split_pair, data, off, len, ndg, &next))
            break;
        fz_q_split->rx.seq = 0;
        nfb_q_config(fz_q_split, &cfg, 0, &step);
        fz_drain(fz_split_pair.wfd);
        fz_recv_all(fz_q_split);
    }
    fz_drain(fz_split_pair.rfd);
    fz_q_split->rx.stash_len = 0;
    fz_q_split->rx.stash_ready = 0;
    return 0;
}
