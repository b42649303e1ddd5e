/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * libFuzzer target: nfbind's NFLOG receive path (cdef/nflog.c and the
 * core's batcher and transaction in cdef/core.c), compiled from the same
 * sources as the nfbind._nflog module.
 *
 * One input is the bytes of what a netlink socket handed over: one or more
 * netlink messages, well-formed or not.  It goes through
 *   1. nfb_rx_parse() with nfb_log_parse_packet() over an exact-size copy
 *      (all families, then only AF_INET: the family filter's count);
 *   2. nfb_log_recv() over a datagram socket, as one datagram;
 *   3. nfb_log_recv() with slots too small for it (MSG_TRUNC, the cut
 *      message's nlmsg_len clamped), keeping only AF_INET packets;
 *   4. nfb_log_recv() with the input cut into datagrams at each message's
 *      claimed nlmsg_len (unaligned, short and long datagrams compacted);
 *   5. nfb_log_config() for one group, whose wait for acknowledgements
 *      reads the same datagrams (NLMSG_ERROR matched by sequence, packets
 *      kept in the stash), then nfb_log_recv() handing out the stash.
 * Every record's (offset, length) ranges are checked against the batch.
 */
#include "nflog.c"
#include "fuzz_common.h"

#define FZ_PKT_TYPE ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)

static struct nfb_log fz_direct = { .family = -1 };
static struct fz_pair fz_big, fz_small, fz_split_pair;
static struct nfb_log *fz_q_big, *fz_q_small, *fz_q_split;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    FZ_CHECK(nfb_rx_init(&fz_direct.rx, -1, 4096, 2) == 0);
    fz_direct.family = -1;
    fz_pair_open(&fz_big);
    fz_pair_open(&fz_small);
    fz_pair_open(&fz_split_pair);
    fz_q_big = nfb_log_new(fz_big.rfd, 65536, 4, -1);
    fz_q_small = nfb_log_new(fz_small.rfd, 64, 4, NFPROTO_IPV4);
    fz_q_split = nfb_log_new(fz_split_pair.rfd, 8192, FZ_BURST, -1);
    FZ_CHECK(fz_q_big && fz_q_small && fz_q_split);
    return 0;
}

static void fz_check(const struct nfb_rx *rx, int rc)
{
    FZ_CHECK(rc >= 0 || rc == -ENOMEM);
    if (rc <= 0)
        return;
    FZ_CHECK(rc == rx->npkts);
    fz_check_packet_recs(rx->data, rx->data_len, rx->recs, rx->npkts);
}

/* Receive until the socket is drained (bounded). */
static void fz_recv_all(void *arg)
{
    struct nfb_log *q = arg;
    int k;
    for (k = 0; k < 64; k++) {
        int rc = nfb_log_recv(q);
        fz_check(&q->rx, rc);
        if (rc <= 0 && !q->rx.stash_len)
            break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static size_t off[FZ_MAX_DGRAMS], len[FZ_MAX_DGRAMS];
    static const uint16_t groups[1] = { 1 };
    char *copy = malloc(size ? size : 1);
    int rc, all, ndg, next;
    uint64_t filtered;

    FZ_CHECK(copy != NULL);
    memcpy(copy, data, size);

    /* 1. the parser over exactly the input's bytes, every family, then
     * AF_INET only: kept + filtered out = every packet message */
    fz_direct.family = -1;
    all = nfb_rx_parse(&fz_direct.rx, copy, size, FZ_PKT_TYPE, nfb_log_parse_packet,
                       &fz_direct);
    FZ_CHECK(all >= 0);
    fz_check(&fz_direct.rx, all);
    fz_direct.family = NFPROTO_IPV4;
    filtered = fz_direct.filtered;
    rc = nfb_rx_parse(&fz_direct.rx, copy, size, FZ_PKT_TYPE, nfb_log_parse_packet,
                      &fz_direct);
    FZ_CHECK(rc >= 0);
    fz_check(&fz_direct.rx, rc);
    FZ_CHECK((uint64_t)rc + (fz_direct.filtered - filtered) == (uint64_t)all);
    free(copy);

    /* 2-4. one datagram into large slots, into 64-byte slots (cut), and the
     * datagrams as the headers claim them */
    ndg = fz_recv_paths(data, size, off, len, fz_recv_all, &fz_big, fz_q_big,
                        &fz_small, fz_q_small, &fz_split_pair, fz_q_split);

    /* 5. the same datagrams read while waiting for configuration acks;
     * sequence numbers restart at 1 so an input can answer the requests */
    next = 0;
    while (next < ndg) {
        struct nfb_logcfg cfg = { .cmd = NFULNL_CFG_CMD_BIND, .copy_mode = -1,
                                  .nlbufsiz = -1, .timeout = -1, .qthresh = -1,
                                  .flags = -1 };
        int fg = 0, step = 0;
        if (!fz_send_burst(&fz_split_pair, data, off, len, ndg, &next))
            break;
        fz_q_split->rx.seq = 0;
        nfb_log_config(fz_q_split, groups, 1, &cfg, 0, &fg, &step);
        fz_drain(fz_split_pair.wfd);
        fz_recv_all(fz_q_split);
    }
    fz_drain(fz_split_pair.rfd);
    fz_q_split->rx.stash_len = 0;
    fz_q_split->rx.stash_ready = 0;
    return 0;
}
