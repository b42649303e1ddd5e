// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ct_fill: fill the conntrack table of the current network namespace with N
 * UDP entries, for benchmarks/bench_conntrack.py.
 *
 *   ct_fill N [TIMEOUT_SECONDS]
 *
 * Entry i (0 <= i < N) is the IPv4 UDP flow
 *
 *   orig  10.1.0.0 + (i >> 8) : 10000 + (i & 0xff)  ->  10.2.0.1 + (i % 251) : 53
 *   reply the inverse tuple
 *   mark  i, timeout TIMEOUT_SECONDS (default 86400),
 *   status SEEN_REPLY|ASSURED for even i, none (apart from what the kernel
 *   sets itself) for odd i
 *
 * so every original tuple is distinct and N may be up to 2^24.  Entries are
 * built with libnetfilter_conntrack (nfct_set_attr_*, nfct_nlmsg_build) and
 * sent with libmnl as IPCTNL_MSG_CT_NEW requests, many per sendmsg(); every
 * request asks for an ACK and every ACK is checked, so a single failed create
 * fails the whole run (e.g. EEXIST when the table is already filled, ENOMEM
 * when nf_conntrack_max is too small).
 *
 * Prints one JSON line: {"created":N,"seconds":S}.  Exit status 1 on error.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>

#define MAX_ENTRIES (1UL << 24)
#define PER_SEND 256                    /* requests per sendmsg() */
#define SEND_BUF (PER_SEND * 512)       /* a request is ~200 bytes */
#define RCVBUF_BYTES (8 << 20)

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned long parse_ulong(const char *s, const char *name,
				 unsigned long min, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		fprintf(stderr, "ct_fill: bad %s '%s' (%lu..%lu)\n", name, s,
			min, max);
		exit(64);
	}
	return v;
}

/* Build the IPCTNL_MSG_CT_NEW request for entry i at buf. */
static struct nlmsghdr *build_one(void *buf, struct nf_conntrack *ct,
				  uint32_t i, uint32_t seq, uint32_t timeout)
{
	struct nlmsghdr *nlh;
	struct nfgenmsg *nfh;
	uint32_t src = htonl(0x0A010000u + (i >> 8));
	uint32_t dst = htonl(0x0A020001u + (i % 251));
	uint16_t sport = htons(10000 + (i & 0xff));
	uint16_t dport = htons(53);

	nfct_set_attr_u8(ct, ATTR_ORIG_L3PROTO, AF_INET);
	nfct_set_attr_u32(ct, ATTR_ORIG_IPV4_SRC, src);
	nfct_set_attr_u32(ct, ATTR_ORIG_IPV4_DST, dst);
	nfct_set_attr_u8(ct, ATTR_ORIG_L4PROTO, IPPROTO_UDP);
	nfct_set_attr_u16(ct, ATTR_ORIG_PORT_SRC, sport);
	nfct_set_attr_u16(ct, ATTR_ORIG_PORT_DST, dport);

	nfct_set_attr_u8(ct, ATTR_REPL_L3PROTO, AF_INET);
	nfct_set_attr_u32(ct, ATTR_REPL_IPV4_SRC, dst);
	nfct_set_attr_u32(ct, ATTR_REPL_IPV4_DST, src);
	nfct_set_attr_u8(ct, ATTR_REPL_L4PROTO, IPPROTO_UDP);
	nfct_set_attr_u16(ct, ATTR_REPL_PORT_SRC, dport);
	nfct_set_attr_u16(ct, ATTR_REPL_PORT_DST, sport);

	nfct_set_attr_u32(ct, ATTR_TIMEOUT, timeout);
	nfct_set_attr_u32(ct, ATTR_MARK, i);
	if (i % 2 == 0)
		nfct_set_attr_u32(ct, ATTR_STATUS,
				  IPS_SEEN_REPLY | IPS_ASSURED);
	else
		nfct_attr_unset(ct, ATTR_STATUS);

	nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
	nlh->nlmsg_seq = seq;
	nfh = mnl_nlmsg_put_extra_header(nlh, sizeof(*nfh));
	nfh->nfgen_family = AF_INET;
	nfh->version = NFNETLINK_V0;
	nfh->res_id = 0;
	if (nfct_nlmsg_build(nlh, ct) < 0) {
		fprintf(stderr, "ct_fill: nfct_nlmsg_build: %s\n", strerror(errno));
		exit(1);
	}
	return nlh;
}

/*
 * Read ACKs until `want` have arrived; return 0, or the first negative errno
 * (with the index of the failed entry in *failed).
 */
static int collect_acks(struct mnl_socket *nl, char *rbuf, size_t rlen,
			unsigned int want, uint32_t seq0, uint32_t *failed)
{
	unsigned int got = 0;
	int first_err = 0;

	while (got < want) {
		ssize_t n = mnl_socket_recvfrom(nl, rbuf, rlen);
		const struct nlmsghdr *nlh = (const struct nlmsghdr *)rbuf;
		int len = (int)n;

		if (n < 0) {
			fprintf(stderr, "ct_fill: recv: %s\n", strerror(errno));
			exit(1);
		}
		while (mnl_nlmsg_ok(nlh, len)) {
			if (nlh->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);

				got++;
				if (e->error && !first_err) {
					first_err = e->error;
					*failed = nlh->nlmsg_seq - seq0;
				}
			}
			nlh = mnl_nlmsg_next(nlh, &len);
		}
	}
	return first_err;
}

int main(int argc, char **argv)
{
	struct mnl_socket *nl;
	struct nf_conntrack *ct;
	unsigned long n;
	uint32_t timeout = 86400, i, seq0;
	char *sbuf, *rbuf;
	size_t rlen = 1 << 18;
	int rcvbuf = RCVBUF_BYTES;
	double t0, t1;

	if (argc != 2 && argc != 3) {
		fprintf(stderr, "usage: %s N [TIMEOUT_SECONDS]\n", argv[0]);
		return 64;
	}
	n = parse_ulong(argv[1], "N", 1, MAX_ENTRIES);
	if (argc == 3)
		timeout = parse_ulong(argv[2], "timeout", 1, 0x7fffffffUL);

	sbuf = malloc(SEND_BUF + 1024);
	rbuf = malloc(rlen);
	ct = nfct_new();
	if (!sbuf || !rbuf || !ct) {
		fprintf(stderr, "ct_fill: out of memory\n");
		return 1;
	}
	nl = mnl_socket_open(NETLINK_NETFILTER);
	if (!nl || mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		fprintf(stderr, "ct_fill: netlink socket: %s\n", strerror(errno));
		return 1;
	}
	/* room for a whole batch of ACKs; needs CAP_NET_ADMIN, else best effort */
	if (setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUFFORCE,
		       &rcvbuf, sizeof(rcvbuf)) < 0)
		setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUF,
			   &rcvbuf, sizeof(rcvbuf));

	seq0 = (uint32_t)time(NULL);
	t0 = now();
	for (i = 0; i < n;) {
		size_t off = 0;
		unsigned int k = 0;
		uint32_t failed = 0;
		int err;

		/* a request is far below 1 KiB; sbuf has that much slack */
		while (i < n && k < PER_SEND && off + 1024 <= SEND_BUF) {
			struct nlmsghdr *nlh = build_one(sbuf + off, ct, i, seq0 + i,
							 timeout);

			off += NLMSG_ALIGN(nlh->nlmsg_len);
			i++;
			k++;
		}
		if (mnl_socket_sendto(nl, sbuf, off) < 0) {
			fprintf(stderr, "ct_fill: send: %s\n", strerror(errno));
			return 1;
		}
		err = collect_acks(nl, rbuf, rlen, k, seq0, &failed);
		if (err) {
			fprintf(stderr, "ct_fill: creating entry %u failed: %s%s\n",
				failed, strerror(-err),
				err == -EEXIST ? " (table already filled?)" :
				err == -ENOMEM ? " (nf_conntrack_max too small?)" : "");
			return 1;
		}
	}
	t1 = now();

	printf("{\"created\":%lu,\"seconds\":%.6f}\n", n, t1 - t0);
	nfct_destroy(ct);
	mnl_socket_close(nl);
	free(sbuf);
	free(rbuf);
	return 0;
}
