/* SPDX-License-Identifier: GPL-2.0-or-later
 *
 * What the libFuzzer targets under fuzz/ share: a datagram socket pair that
 * stands in for the netlink socket (the receive functions only call
 * recvmmsg()/recv()/poll()/send() on their descriptor), the split of one
 * fuzz input into datagrams, and the checks of the parsed records' byte
 * ranges against the buffer they point into.  A failed check calls
 * __builtin_trap(), which libFuzzer reports as a crash.
 */
#ifndef NFB_FUZZ_COMMON_H
#define NFB_FUZZ_COMMON_H
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

/* Datagrams queued at once: below the default net.unix.max_dgram_qlen (10),
 * so a non-blocking send never finds the peer's queue full. */
#define FZ_BURST 8
/* Upper bound of datagrams taken from one input. */
#define FZ_MAX_DGRAMS 256

#define FZ_CHECK(cond) do { if (!(cond)) __builtin_trap(); } while (0)

struct fz_pair {
    int rfd;    /* the descriptor the parser reads (its "netlink socket") */
    int wfd;    /* the peer: the harness writes datagrams here */
};

static void fz_pair_open(struct fz_pair *p)
{
    int sv[2], big = 4 << 20;
    FZ_CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) == 0);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    p->rfd = sv[0];
    p->wfd = sv[1];
}

/* Throw away whatever is queued on fd (requests the code under test sent, leftovers). */
static void fz_drain(int fd)
{
    char buf[512];
    int i;
    for (i = 0; i < 4096; i++)
        if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) < 0)
            break;
}

/* Cut data[0..n) into datagrams the way a lying header says: each one is as
 * long as the nlmsg_len at its start (at least 1 byte, at most what is left),
 * so short, unaligned and oversized lengths all reach the receive path. */
static int fz_split(const uint8_t *data, size_t n, size_t *off, size_t *len)
{
    size_t pos = 0;
    int k = 0;
    while (pos < n && k < FZ_MAX_DGRAMS) {
        size_t left = n - pos, l = left;
        if (left >= 4) {
            uint32_t claimed;
            memcpy(&claimed, data + pos, 4);
            l = claimed ? claimed : 1;
            if (l > left)
                l = left;
        }
        off[k] = pos;
        len[k] = l;
        k++;
        pos += l;
    }
    return k;
}

/* Queue datagrams [*next, ndg) on p->wfd, at most FZ_BURST; returns how many. */
static int fz_send_burst(struct fz_pair *p, const uint8_t *data, const size_t *off,
                         const size_t *len, int ndg, int *next)
{
    int sent = 0;
    while (*next < ndg && sent < FZ_BURST) {
        if (send(p->wfd, data + off[*next], len[*next], MSG_DONTWAIT) < 0)
            break;
        (*next)++;
        sent++;
    }
    return sent;
}

/* Steps 2 to 4 of the packet targets: the input through recv_all as one
 * datagram into large slots, as one datagram into 64-byte slots (cut), and as
 * the datagrams its headers claim, in bursts.  Fills off/len with those
 * datagrams for the target's later steps and returns how many there are. */
static int fz_recv_paths(const uint8_t *data, size_t size, size_t *off, size_t *len,
                         void (*recv_all)(void *q),
                         struct fz_pair *big, void *q_big,
                         struct fz_pair *small, void *q_small,
                         struct fz_pair *split, void *q_split)
{
    int ndg, next = 0;

    if (send(big->wfd, data, size, MSG_DONTWAIT) == (ssize_t)size)
        recv_all(q_big);
    fz_drain(big->rfd);

    if (send(small->wfd, data, size, MSG_DONTWAIT) == (ssize_t)size)
        recv_all(q_small);
    fz_drain(small->rfd);

    ndg = fz_split(data, size, off, len);
    while (next < ndg) {
        if (!fz_send_burst(split, data, off, len, ndg, &next))
            break;
        recv_all(q_split);
    }
    fz_drain(split->rfd);
    return ndg;
}

/* Read every byte of [off, off+len) of a buffer of size bytes: the range
 * must lie inside it, and AddressSanitizer sees each byte read. */
static unsigned fz_touch_range(const char *buf, size_t size, uint32_t off, uint32_t len)
{
    unsigned sum = 0;
    uint32_t i;
    FZ_CHECK((uint64_t)off + len <= size);
    for (i = 0; i < len; i++)
        sum += (unsigned char)buf[off + i];
    return sum;
}

#ifdef NFB_CORE_C
/* Every (offset, length) a packet record holds must lie in the batch. */
static unsigned fz_check_packet_recs(const char *data, size_t size, const uint32_t *recs,
                                     int n)
{
    static const struct { uint32_t bit; int field; } ranges[] = {
        { NFB_A_PAYLOAD, NFB_F_PAYLOAD_OFF },
        { NFB_A_HWADDR, NFB_F_HWADDR_OFF },
        { NFB_A_L2HDR, NFB_F_L2HDR_OFF },
        { NFB_A_SECCTX, NFB_F_SECCTX_OFF },
        { NFB_A_CT, NFB_F_CT_OFF },
        { NFB_A_EXP, NFB_F_EXP_OFF },
        { NFB_A_PREFIX, NFB_F_PREFIX_OFF },
        { NFB_A_HWHDR, NFB_F_HWHDR_OFF },
    };
    unsigned sum = 0;
    int i;
    size_t j;
    for (i = 0; i < n; i++) {
        const uint32_t *rec = recs + (size_t)i * NFB_F_COUNT;
        for (j = 0; j < sizeof(ranges) / sizeof(ranges[0]); j++) {
            if (rec[NFB_F_ATTRS] & ranges[j].bit)
                sum += fz_touch_range(data, size, rec[ranges[j].field],
                                      rec[ranges[j].field + 1]);
            else
                FZ_CHECK(rec[ranges[j].field] == 0 && rec[ranges[j].field + 1] == 0);
        }
    }
    return sum;
}
#endif

#endif
