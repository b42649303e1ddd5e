// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * nflog_ref: the C reference NFLOG consumer for benchmarks/bench_nflog.py.
 *
 * A deliberately ordinary consumer built on libnetfilter_log's classic API:
 * nflog_open(), nflog_bind_group(), nflog_set_mode(NFULNL_COPY_PACKET,
 * 0xffff), nflog_callback_register(), then recv() + nflog_handle_packet() in
 * a loop.  The callback reads what a real consumer would (the prefix, the
 * payload pointer and length, the input interface, the mark, the
 * timestamp) and counts.
 *
 *   nflog_ref [--stream] [--idle S] [--rcvbuf B] [--rss-every K] [--timeout T]
 *             GROUP N
 *
 * (the command line is ref_args.h's, shared with nfq_ref.c).  Forces the
 * socket's receive buffer to --rcvbuf bytes (SO_RCVBUFFORCE; the kernel
 * doubles it), does NOT set NETLINK_NO_ENOBUFS so that a lost message shows
 * up as ENOBUFS, prints "READY" once bound, then handles packets.  The clock
 * starts when the first recv() returns and stops when the callback has seen
 * the N-th packet.  Then whatever is still readable is drained without
 * waiting (not timed) and counted as "extra", and one JSON line is printed:
 *
 *   {"impl":"c","packets":N,"seconds":S,"pps":P,"enobufs":E,"extra":X,...}
 *
 * Exits 2 (with a message on stderr, and the JSON line with the count so
 * far) if N packets are not seen within --timeout seconds (default 60) of
 * READY, or if none arrives for --idle seconds (default 3) once packets have
 * started to come.
 *
 * With --stream (the stream and overload scenarios: the consumer runs while
 * the packets are sent, and some may be lost), running out of packets for
 * --idle seconds is the normal end: the consumer exits 0 and reports the
 * packets it handled, with "seconds" from the first recv() to the last
 * packet handled (the callback then reads the clock for every packet).
 * --rss-every K is the same, and every K packets the resident set size is
 * sampled.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/socket.h>
#include <sys/time.h>

#include <libnetfilter_log/libnetfilter_log.h>

#include "ref_args.h"
#include "ref_common.h"

/* room for one message with a full 0xffff copy and its attributes */
#define RECV_BUF_BYTES (0xffff + 8192)

struct state {
	unsigned long npackets;
	unsigned long done;
	unsigned long no_timestamp;
	unsigned long with_prefix;
	uint64_t payload_bytes;
	uint64_t indev_sum;
	uint64_t mark_sum;
	double t_nth;
	double t_last;
	int stream;
	unsigned long rss_every;
};

/* CPU seconds used when READY was printed */
static double cpu0;

static int on_packet(struct nflog_g_handle *gh, struct nfgenmsg *nfmsg,
		     struct nflog_data *nfa, void *data)
{
	struct state *st = data;
	struct timeval tv;
	char *payload = NULL;
	char *prefix;
	int len;

	(void)gh;
	(void)nfmsg;
	if (st->done >= st->npackets) {
		st->done++;	/* more than N: reported as "extra" */
		return 0;
	}
	prefix = nflog_get_prefix(nfa);
	if (prefix && prefix[0])
		st->with_prefix++;
	len = nflog_get_payload(nfa, &payload);
	if (len > 0 && payload)
		st->payload_bytes += (uint64_t)len;
	st->indev_sum += nflog_get_indev(nfa);
	st->mark_sum += nflog_get_nfmark(nfa);
	if (nflog_get_timestamp(nfa, &tv) < 0)
		st->no_timestamp++;
	st->done++;
	if (st->stream)
		st->t_last = now();
	if (st->rss_every && st->done % st->rss_every == 0)
		rss_sample(st->done);
	if (st->done == st->npackets)
		st->t_nth = now();
	return 0;
}

static void report(const struct state *st, double secs, unsigned long enobufs,
		   unsigned long extra, unsigned long recvs, int rcvbuf)
{
	printf("{\"impl\":\"c\",\"packets\":%lu,\"seconds\":%.6f,\"pps\":%.1f,"
	       "\"enobufs\":%lu,\"extra\":%lu,\"rcvbuf\":%d,\"recv_calls\":%lu,"
	       "\"with_prefix\":%lu,\"no_timestamp\":%lu,"
	       "\"payload_bytes\":%llu,\"mark_sum\":%llu,\"cpu_seconds\":%.3f",
	       st->done > st->npackets ? st->npackets : st->done, secs,
	       secs > 0 ? (double)st->done / secs : 0.0, enobufs, extra, rcvbuf, recvs,
	       st->with_prefix, st->no_timestamp,
	       (unsigned long long)st->payload_bytes,
	       (unsigned long long)st->mark_sum, cpu_now() - cpu0);
	if (st->rss_every)
		rss_print();
	printf("}\n");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct ref_args args;
	unsigned long group, timeout_s;
	unsigned long enobufs = 0, recvs = 0, extra = 0;
	double idle_s;
	struct state st;
	struct nflog_handle *h;
	struct nflog_g_handle *gh;
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };
	double t_first = 0.0, t_progress = 0.0, deadline;
	unsigned long done_seen = 0;
	int fd, rcvbuf;
	socklen_t optlen = sizeof(rcvbuf);
	char *buf;

	ref_parse_args(argc, argv, "nflog_ref", REF_STREAM, &args);
	memset(&st, 0, sizeof(st));
	group = args.num;
	st.npackets = args.npackets;
	timeout_s = args.timeout_s;
	idle_s = args.idle_s > 0 ? args.idle_s : 3.0;
	st.rss_every = args.rss_every;
	st.stream = args.stream || args.rss_every;

	buf = malloc(RECV_BUF_BYTES);
	if (!buf)
		die("malloc");

	h = nflog_open();
	if (!h)
		die("nflog_open");
	fd = nflog_fd(h);

	rcvbuf = args.rcvbuf;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf,
		       sizeof(rcvbuf)) < 0)
		die("SO_RCVBUFFORCE");
	if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &optlen) < 0)
		die("SO_RCVBUF");

	gh = nflog_bind_group(h, (uint16_t)group);
	if (!gh)
		die("nflog_bind_group");
	if (nflog_set_mode(gh, NFULNL_COPY_PACKET, 0xffff) < 0)
		die("nflog_set_mode");
	nflog_callback_register(gh, on_packet, &st);

	/* a receive timeout so the deadlines are checked while idle */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
		die("SO_RCVTIMEO");

	if (st.rss_every)
		rss_sample(0);
	cpu0 = cpu_now();
	printf("READY\n");
	fflush(stdout);
	deadline = now() + (double)timeout_s;

	while (st.done < st.npackets) {
		ssize_t n;

		recvs++;
		n = recv(fd, buf, RECV_BUF_BYTES, 0);
		if (n < 0) {
			if (errno == ENOBUFS) {
				/* the kernel dropped messages: counted, fatal for
				 * the driver, but keep going to report it */
				enobufs++;
				continue;
			}
			if (errno == EAGAIN || errno == EWOULDBLOCK ||
			    errno == EINTR) {
				/* no clock reads per packet: deadlines are only
				 * checked when the socket has been empty */
				double t = now();

				if (t > deadline)
					goto timeout;
				if (st.done != done_seen) {
					done_seen = st.done;
					t_progress = t;
				} else if (st.done && t - t_progress > idle_s) {
					if (st.stream)
						goto stream_end;
					goto idle;
				}
				continue;
			}
			die("recv");
		}
		if (t_first == 0.0)
			t_first = now();
		nflog_handle_packet(h, buf, (int)n);
	}

	/* not timed: anything more than N that is already waiting */
	for (;;) {
		ssize_t n = recv(fd, buf, RECV_BUF_BYTES, MSG_DONTWAIT);

		if (n < 0) {
			if (errno == ENOBUFS) {
				enobufs++;
				continue;
			}
			break;
		}
		nflog_handle_packet(h, buf, (int)n);
	}
	extra = st.done - st.npackets;
	st.done = st.npackets;
	report(&st, st.t_nth - t_first, enobufs, extra, recvs, rcvbuf);
	nflog_unbind_group(gh);
	nflog_close(h);
	free(buf);
	return 0;

stream_end:
	report(&st, st.t_last - t_first, enobufs, 0, recvs, rcvbuf);
	nflog_unbind_group(gh);
	nflog_close(h);
	free(buf);
	return 0;

timeout:
	fprintf(stderr, "nflog_ref: timeout: %lu of %lu packets after %lu s\n",
		st.done, st.npackets, timeout_s);
	goto fail;
idle:
	fprintf(stderr, "nflog_ref: no packet for %g s after %lu of %lu\n",
		idle_s, st.done, st.npackets);
fail:
	report(&st, 0.0, enobufs, 0, recvs, rcvbuf);
	nflog_unbind_group(gh);
	nflog_close(h);
	free(buf);
	return 2;
}
