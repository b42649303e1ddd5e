// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ct_dump_ref: the C reference conntrack dumper for
 * benchmarks/bench_conntrack.py.
 *
 *   ct_dump_ref [FAMILY]          FAMILY: unspec (default), inet, inet6
 *
 * An ordinary libnetfilter_conntrack consumer: nfct_open(CONNTRACK, 0),
 * nfct_callback_register(NFCT_T_ALL), nfct_query(NFCT_Q_DUMP, &family), the
 * library's default buffer sizes.  The callback reads each entry the way a
 * real consumer would (layer 3/4 protocol, original and reply addresses and
 * ports, mark, status, timeout, zone, id, with nfct_get_attr_*), counts it,
 * and keeps per-field sums so the driver can check that every implementation
 * saw the same table.  The clock runs from before nfct_open() to after
 * nfct_close().  Prints one JSON line:
 *
 *   {"impl":"c","flows":N,"seconds":S,"sums":{...},...}
 *
 * Sums are over IPv4 entries only (addresses as host-order u32, ports as
 * host-order u16); "ipv4"/"other_l3" count entries by family.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <libnetfilter_conntrack/libnetfilter_conntrack.h>

struct state {
	uint64_t flows, ipv4, other_l3, with_ports;
	uint64_t orig_src, orig_dst, orig_sport, orig_dport;
	uint64_t reply_src, reply_dst, reply_sport, reply_dport;
	uint64_t proto, mark, status, zone, id_nonzero;
	uint32_t timeout_min, timeout_max;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double tv_secs(const struct timeval *tv)
{
	return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

static int on_flow(enum nf_conntrack_msg_type type, struct nf_conntrack *ct,
		   void *data)
{
	struct state *st = data;
	uint8_t l3 = nfct_get_attr_u8(ct, ATTR_ORIG_L3PROTO);
	uint8_t l4 = nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO);
	uint32_t timeout = nfct_get_attr_u32(ct, ATTR_TIMEOUT);

	(void)type;
	st->flows++;
	if (l3 == AF_INET) {
		st->ipv4++;
		st->orig_src += ntohl(nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_SRC));
		st->orig_dst += ntohl(nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_DST));
		st->reply_src += ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_SRC));
		st->reply_dst += ntohl(nfct_get_attr_u32(ct, ATTR_REPL_IPV4_DST));
		if (l4 == IPPROTO_UDP || l4 == IPPROTO_TCP ||
		    l4 == IPPROTO_SCTP || l4 == IPPROTO_UDPLITE ||
		    l4 == IPPROTO_DCCP) {
			st->with_ports++;
			st->orig_sport += ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_SRC));
			st->orig_dport += ntohs(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_DST));
			st->reply_sport += ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_SRC));
			st->reply_dport += ntohs(nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST));
		}
		st->proto += l4;
		st->mark += nfct_get_attr_u32(ct, ATTR_MARK);
		st->status += nfct_get_attr_u32(ct, ATTR_STATUS);
		st->zone += nfct_get_attr_u16(ct, ATTR_ZONE);
	} else {
		st->other_l3++;
	}
	if (nfct_get_attr_u32(ct, ATTR_ID))
		st->id_nonzero++;
	if (timeout < st->timeout_min)
		st->timeout_min = timeout;
	if (timeout > st->timeout_max)
		st->timeout_max = timeout;
	return NFCT_CB_CONTINUE;
}

int main(int argc, char **argv)
{
	struct state st;
	struct nfct_handle *h;
	struct rusage ru0, ru1;
	uint32_t family = AF_UNSPEC;
	double t0, t1;
	int ret;

	if (argc > 2) {
		fprintf(stderr, "usage: %s [unspec|inet|inet6]\n", argv[0]);
		return 64;
	}
	if (argc == 2) {
		if (!strcmp(argv[1], "inet"))
			family = AF_INET;
		else if (!strcmp(argv[1], "inet6"))
			family = AF_INET6;
		else if (strcmp(argv[1], "unspec")) {
			fprintf(stderr, "ct_dump_ref: bad family '%s'\n", argv[1]);
			return 64;
		}
	}
	memset(&st, 0, sizeof(st));
	st.timeout_min = UINT32_MAX;

	getrusage(RUSAGE_SELF, &ru0);
	t0 = now();
	h = nfct_open(CONNTRACK, 0);
	if (!h) {
		fprintf(stderr, "ct_dump_ref: nfct_open: %s\n", strerror(errno));
		return 1;
	}
	nfct_callback_register(h, NFCT_T_ALL, on_flow, &st);
	ret = nfct_query(h, NFCT_Q_DUMP, &family);
	if (ret < 0) {
		fprintf(stderr, "ct_dump_ref: nfct_query(NFCT_Q_DUMP): %s\n",
			strerror(errno));
		nfct_close(h);
		return 1;
	}
	nfct_close(h);
	t1 = now();
	getrusage(RUSAGE_SELF, &ru1);

	if (!st.flows)
		st.timeout_min = 0;
	printf("{\"impl\":\"c\",\"flows\":%llu,\"seconds\":%.6f,"
	       "\"user\":%.3f,\"sys\":%.3f,"
	       "\"ipv4\":%llu,\"other_l3\":%llu,\"id_nonzero\":%llu,"
	       "\"timeout_min\":%u,\"timeout_max\":%u,\"sums\":{"
	       "\"orig_src\":%llu,\"orig_dst\":%llu,\"orig_sport\":%llu,"
	       "\"orig_dport\":%llu,\"reply_src\":%llu,\"reply_dst\":%llu,"
	       "\"reply_sport\":%llu,\"reply_dport\":%llu,\"with_ports\":%llu,"
	       "\"proto\":%llu,\"mark\":%llu,\"status\":%llu,\"zone\":%llu}}\n",
	       (unsigned long long)st.flows, t1 - t0,
	       tv_secs(&ru1.ru_utime) - tv_secs(&ru0.ru_utime),
	       tv_secs(&ru1.ru_stime) - tv_secs(&ru0.ru_stime),
	       (unsigned long long)st.ipv4, (unsigned long long)st.other_l3,
	       (unsigned long long)st.id_nonzero, st.timeout_min, st.timeout_max,
	       (unsigned long long)st.orig_src, (unsigned long long)st.orig_dst,
	       (unsigned long long)st.orig_sport, (unsigned long long)st.orig_dport,
	       (unsigned long long)st.reply_src, (unsigned long long)st.reply_dst,
	       (unsigned long long)st.reply_sport,
	       (unsigned long long)st.reply_dport,
	       (unsigned long long)st.with_ports, (unsigned long long)st.proto,
	       (unsigned long long)st.mark, (unsigned long long)st.status,
	       (unsigned long long)st.zone);
	return 0;
}
