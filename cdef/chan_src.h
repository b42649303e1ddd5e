/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The receive side NFQUEUE and NFLOG share: one non-blocking recvmmsg()
 * brings many datagrams, which are compacted into one contiguous run of
 * netlink messages and parsed into fixed records (packet_src.h) by a
 * channel-specific callback; configuration requests wait for the kernel's
 * acknowledgements while packets that arrive meanwhile are kept (the stash)
 * for the next receive.
 */
#ifndef NFB_CHAN_SRC_H
#define NFB_CHAN_SRC_H
#include "packet_src.h"

struct nfb_rx {
    int fd;
    char *data;             /* current batch: contiguous netlink messages */
    size_t data_len;
    uint32_t *recs;         /* npkts records of NFB_F_COUNT words */
    int npkts;
    uint64_t overruns;
    uint64_t async_errors;
    int last_async_error;
    uint64_t truncated_msgs;
    uint64_t recv_calls;
    uint64_t send_calls;
    int short_read;         /* the last receive found the socket drained */
    /* private */
    uint32_t seq;
    uint32_t slot_size;
    int nslots;
    char *rbuf;             /* nslots * slot_size */
    struct mmsghdr *mm;
    struct iovec *iov;
    int rec_cap;
    char *stash;            /* packet messages read while waiting for acks */
    size_t stash_len, stash_cap;
    int stash_ready;        /* the current batch was parsed from the stash */
};

/* Fill rec from one packet message; return 1 to keep it, 0 to skip it. */
typedef int (*nfb_parse_fn)(void *ctx, const struct nlmsghdr *nlh,
                            const char *base, uint32_t *rec);

static int nfb_rx_alloc(struct nfb_rx *rx, uint32_t slot_size, int nslots)
{
    char *rbuf = malloc((size_t)slot_size * nslots);
    struct mmsghdr *mm = calloc(nslots, sizeof(*mm));
    struct iovec *iov = calloc(nslots, sizeof(*iov));
    uint32_t *recs = malloc(sizeof(uint32_t) * NFB_F_COUNT * nslots);
    if (!rbuf || !mm || !iov || !recs) {
        free(rbuf); free(mm); free(iov); free(recs);
        return -ENOMEM;
    }
    free(rx->rbuf); free(rx->mm); free(rx->iov); free(rx->recs);
    rx->rbuf = rbuf; rx->mm = mm; rx->iov = iov; rx->recs = recs;
    rx->rec_cap = nslots;
    rx->slot_size = slot_size;
    rx->nslots = nslots;
    rx->data = rbuf;
    rx->data_len = 0;
    rx->npkts = 0;
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

/* Parse data[0..len): packets through fn into records, errors counted. */
static int nfb_rx_parse(struct nfb_rx *rx, char *data, size_t len,
                        uint16_t pkt_type, nfb_parse_fn fn, void *ctx)
{
    const struct nlmsghdr *nlh = (const struct nlmsghdr *)data;
    int remaining = (int)len;
    int n = 0;

    rx->data = data;
    rx->data_len = len;
    while (nfb_nlmsg_ok(nlh, remaining)) {
        if (nlh->nlmsg_type == NLMSG_ERROR) {
            const struct nlmsgerr *err = mnl_nlmsg_get_payload(nlh);
            if (nlh->nlmsg_len >= mnl_nlmsg_size(sizeof(*err)) && err->error) {
                rx->async_errors++;
                /* negated in unsigned: a lying error of INT_MIN is no overflow */
                rx->last_async_error = (int)(0u - (unsigned int)err->error);
            }
        } else if (nlh->nlmsg_type == pkt_type &&
                   nlh->nlmsg_len >= NLMSG_HDRLEN + sizeof(struct nfgenmsg)) {
            if (nfb_rx_grow_recs(rx, n + 1) < 0)
                return -ENOMEM;
            uint32_t *rec = rx->recs + (size_t)n * NFB_F_COUNT;
            memset(rec, 0, sizeof(uint32_t) * NFB_F_COUNT);
            n += fn(ctx, nlh, data, rec);
        }
        nlh = mnl_nlmsg_next(nlh, &remaining);
    }
    rx->npkts = n;
    return n;
}

/* Drain what is readable now into one batch; never blocks.  Returns the
 * number of records, 0 when nothing was waiting, or -errno. */
static int nfb_rx_recv(struct nfb_rx *rx, uint16_t pkt_type, nfb_parse_fn fn, void *ctx)
{
    int i, r;
    size_t used = 0;

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
        return nfb_rx_parse(rx, rx->stash, rx->stash_len, pkt_type, fn, ctx);
    }
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
        if (rx->mm[i].msg_hdr.msg_flags & MSG_TRUNC) {
            /* keep what arrived: the first attributes still identify the
             * packet (an NFQUEUE packet still gets its verdict); a cut
             * attribute is ignored by the parser */
            rx->truncated_msgs++;
            l = rx->slot_size & ~(size_t)(NLMSG_ALIGNTO - 1);
            if (l >= NLMSG_HDRLEN && ((struct nlmsghdr *)src)->nlmsg_len > l)
                ((struct nlmsghdr *)src)->nlmsg_len = (uint32_t)l;
        }
        if (src != rx->rbuf + used)
            memmove(rx->rbuf + used, src, l);
        /* a datagram of unaligned length: its padding is zeros, not what the
         * buffer held before (a lying nlmsg_len must not read stale bytes) */
        if (NLMSG_ALIGN(l) != l &&
            used + NLMSG_ALIGN(l) <= (size_t)rx->slot_size * rx->nslots)
            memset(rx->rbuf + used + l, 0, NLMSG_ALIGN(l) - l);
        used += NLMSG_ALIGN(l);
    }
    return nfb_rx_parse(rx, rx->rbuf, used, pkt_type, fn, ctx);
}

static void nfb_rx_stash(struct nfb_rx *rx, const struct nlmsghdr *nlh)
{
    size_t l = NLMSG_ALIGN(nlh->nlmsg_len);
    if (rx->stash_len + l > rx->stash_cap) {
        size_t cap = rx->stash_cap ? rx->stash_cap : 65536;
        char *s;
        while (cap < rx->stash_len + l)
            cap *= 2;
        s = realloc(rx->stash, cap);
        if (!s)
            return;
        rx->stash = s;
        rx->stash_cap = cap;
    }
    memcpy(rx->stash + rx->stash_len, nlh, nlh->nlmsg_len);
    memset(rx->stash + rx->stash_len + nlh->nlmsg_len, 0, l - nlh->nlmsg_len);
    rx->stash_len += l;
    rx->short_read = 0;     /* the next receive has these to hand out */
}

/* Send nmsg requests (buf[0..len), each with NLM_F_ACK and seqs[i]) in one
 * send and wait for their acknowledgements; results[i] gets 0 or -errno,
 * or 1 when no answer came.  Returns 0, or -errno of the send / the wait. */
static int nfb_rx_transact(struct nfb_rx *rx, const char *buf, size_t len, int nmsg,
                           const uint32_t *seqs, int *results, int timeout_ms)
{
    size_t rxcap = rx->slot_size > 65536 + 8192 ? rx->slot_size : 65536 + 8192;
    char *in;
    int nack = 0, failed = 0, i, rc = 0;

    for (i = 0; i < nmsg; i++)
        results[i] = 1;
    if (nmsg == 0)
        return 0;
    in = malloc(rxcap);
    if (!in)
        return -ENOMEM;
    rx->send_calls++;
    if (send(rx->fd, buf, len, 0) < 0) {
        rc = -errno;
        goto out;
    }
    while (nack < nmsg) {
        struct pollfd pfd = { .fd = rx->fd, .events = POLLIN };
        /* Once one request failed, the rest may never be answered: without
         * CAP_NET_ADMIN nfnetlink answers only the first message of a send. */
        int pr = poll(&pfd, 1, failed ? 100 : timeout_ms);
        ssize_t n;
        const struct nlmsghdr *h;
        int remaining;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            rc = pr < 0 ? -errno : -ETIMEDOUT;
            break;
        }
        n = recv(rx->fd, in, rxcap, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            if (errno == ENOBUFS) {
                rx->overruns++;
                continue;
            }
            rc = -errno;
            break;
        }
        h = (const struct nlmsghdr *)in;
        remaining = (int)n;
        while (nfb_nlmsg_ok(h, remaining)) {
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *err = mnl_nlmsg_get_payload(h);
                int matched = 0;
                if (h->nlmsg_len < mnl_nlmsg_size(sizeof(*err))) {
                    /* too short to hold an error code: not an answer */
                    h = mnl_nlmsg_next(h, &remaining);
                    continue;
                }
                for (i = 0; i < nmsg; i++) {
                    if (results[i] == 1 && h->nlmsg_seq == seqs[i]) {
                        results[i] = err->error;
                        if (err->error)
                            failed = 1;
                        nack++;
                        matched = 1;
                        break;
                    }
                }
                if (!matched && err->error) {
                    rx->async_errors++;
                    rx->last_async_error = (int)(0u - (unsigned int)err->error);
                }
            } else if (h->nlmsg_type != NLMSG_NOOP && h->nlmsg_type != NLMSG_DONE) {
                nfb_rx_stash(rx, h);
            }
            h = mnl_nlmsg_next(h, &remaining);
        }
    }
out:
    free(in);
    return rc;
}

/* The first failure among results (0 when none): its -errno, *step its
 * steps[] entry.  A timeout is reported only when nothing failed. */
static int nfb_rx_first_error(int rc, int nmsg, const int *results, const int *steps,
                              int *failed_step)
{
    int i;
    *failed_step = 0;
    for (i = 0; i < nmsg; i++)
        if (results[i] < 0) {
            *failed_step = steps[i];
            return results[i];
        }
    if (rc < 0) {
        for (i = 0; i < nmsg; i++)
            if (results[i] == 1) {
                *failed_step = steps[i];
                break;
            }
        if (!*failed_step && nmsg)
            *failed_step = steps[0];
    }
    return rc;
}
#endif
