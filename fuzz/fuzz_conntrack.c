/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * libFuzzer target: nfbind's conntrack record parser and receive paths
 * (the core's CTA_* parser, batcher and transaction in cdef/core.c, and
 * cdef/conntrack.c), compiled from the same sources as the
 * nfbind._conntrack module.
 *
 * One input is the bytes of what a ctnetlink socket handed over: one or
 * more netlink messages (flows, events, NLMSG_ERROR with or without
 * extended-ack TLVs, NLMSG_DONE), well-formed or not.  It goes through
 *   1. nfb_ct_parse_attrs() over an exact-size copy of the input taken as
 *      CTA_* attributes (how nfbind parses NFQA_CT / NFULA_CT payloads);
 *   2. nfb_ct_recv_events() over a datagram socket, as one datagram, then
 *      cut into datagrams at each message's claimed nlmsg_len;
 *   3. nfb_ct_recv_answer() in record mode, as one datagram, and in raw
 *      mode over the cut datagrams, with the expected sequence number taken
 *      from the input's first message so that its answer is read.
 * Every record's security-context range and raw message offset is checked
 * against the batch data, the conntrack helper name must be NUL-terminated.
 */
#include <stddef.h>     /* offsetof: the cffi module gets it from Python.h */
#include "conntrack.c"
#include "fuzz_common.h"

static struct fz_pair fz_ev, fz_ans;
static struct nfb_ct *fz_c_ev, *fz_c_ans;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_pair_open(&fz_ev);
    fz_pair_open(&fz_ans);
    fz_c_ev = nfb_ct_new(fz_ev.rfd, FZ_BURST);
    fz_c_ans = nfb_ct_new(fz_ans.rfd, 0);
    FZ_CHECK(fz_c_ev && fz_c_ans);
    return 0;
}

static unsigned fz_check_rec(const struct nfb_ct_rec *r, const char *data, size_t size)
{
    unsigned sum = 0;
    if (r->attrs & NFB_CT_A_SECCTX)
        sum += fz_touch_range(data, size, r->secctx_off, r->secctx_len);
    else
        FZ_CHECK(r->secctx_off == 0 && r->secctx_len == 0);
    if (r->attrs & NFB_CT_A_HELPER)
        FZ_CHECK(memchr(r->helper, 0, sizeof(r->helper)) != NULL);
    return sum;
}

static void fz_check_batch(const struct nfb_ct *c, int rc, int mode)
{
    int i;
    FZ_CHECK(rc >= 0 || rc == -ETIMEDOUT || rc == -ENOMEM);
    FZ_CHECK(c->data_len <= c->data_cap);
    if (mode == NFB_M_RAW) {
        for (i = 0; i < c->nmsgs; i++) {
            uint32_t mlen;
            FZ_CHECK((uint64_t)c->moffs[i] + sizeof(struct nlmsghdr) <= c->data_len);
            memcpy(&mlen, c->data + c->moffs[i], 4);
            fz_touch_range(c->data, c->data_len, c->moffs[i], mlen);
        }
        return;
    }
    for (i = 0; i < c->nrecs; i++)
        fz_check_rec(&c->recs[i], c->data, c->data_len);
    FZ_CHECK(c->nv6 <= c->nrecs);
}

static void fz_answer(const uint8_t *data, size_t size, int mode)
{
    int rc;
    uint32_t seq = 0;
    if (size >= 12)
        memcpy(&seq, data + 8, 4);
    fz_c_ans->seq = seq;
    fz_c_ans->done = 0;
    fz_c_ans->error = 0;
    fz_c_ans->errmsg[0] = '\0';
    rc = nfb_ct_recv_answer(fz_c_ans, mode, 1 << 20, 0);
    fz_check_batch(fz_c_ans, rc, mode);
    FZ_CHECK(memchr(fz_c_ans->errmsg, 0, sizeof(fz_c_ans->errmsg)) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static size_t off[FZ_MAX_DGRAMS], len[FZ_MAX_DGRAMS];
    struct nfb_ct_rec rec;
    char *copy = malloc(size ? size : 1);
    int rc, ndg, next;

    FZ_CHECK(copy != NULL);
    memcpy(copy, data, size);

    /* 1. CTA_* attributes, exactly the input's bytes */
    nfb_ct_parse_attrs(copy, (uint32_t)size, AF_INET, &rec);
    fz_check_rec(&rec, copy, size);
    free(copy);

    /* 2. events: one datagram, then datagrams as the headers claim them */
    if (send(fz_ev.wfd, data, size, MSG_DONTWAIT) == (ssize_t)size) {
        rc = nfb_ct_recv_events(fz_c_ev);
        fz_check_batch(fz_c_ev, rc, NFB_M_RECORDS);
    }
    fz_drain(fz_ev.rfd);
    ndg = fz_split(data, size, off, len);
    next = 0;
    while (next < ndg) {
        if (!fz_send_burst(&fz_ev, data, off, len, ndg, &next))
            break;
        rc = nfb_ct_recv_events(fz_c_ev);
        fz_check_batch(fz_c_ev, rc, NFB_M_RECORDS);
    }
    fz_drain(fz_ev.rfd);

    /* 3. the answer to a request: records from one datagram, raw messages
     * from the cut ones */
    if (send(fz_ans.wfd, data, size, MSG_DONTWAIT) == (ssize_t)size)
        fz_answer(data, size, NFB_M_RECORDS);
    fz_drain(fz_ans.rfd);
    next = 0;
    while (next < ndg) {
        if (!fz_send_burst(&fz_ans, data, off, len, ndg, &next))
            break;
        fz_answer(data, size, NFB_M_RAW);
    }
    fz_drain(fz_ans.rfd);
    return 0;
}
