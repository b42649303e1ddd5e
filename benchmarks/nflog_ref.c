// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * nflog_ref: the C reference NFLOG consumer for benchmarks/bench_nflog.py.
 *
 * A deliberately ordinary consumer built on libnetfilter_log's classic API:
 * nflog_open(), nflog_bind_group(), nflog_set_mode(NFULNL_COPY_PACKET,
 * 0xffff), nflog_callback_register(), then recv() + nflog_handle_packet() in
 * a loop.  The callback reads what a real consumer would (the prefix, the
 * payload pointer and length, the input interface, the timestamp) and
 * counts.
 *
 *   nflog_ref GROUP N RCVBUF_BYTES [TIMEOUT_SECONDS [IDLE_SECONDS [stream|rss=K]]]
 *
 * Forces the socket's receive buffer to RCVBUF_BYTES (SO_RCVBUFFORCE; the
 * kernel doubles it), does NOT set NETLINK_NO_ENOBUFS so that a lost message
 * shows up as ENOBUFS, prints "READY" once bound, then handles packets.  The
 * clock starts when the first recv() returns and stops when the callback has
 * seen the N-th packet.  Then whatever is still readable is drained without
 * waiting (not timed) and counted as "extra", and one JSON line is printed:
 *
 *   {"impl":"c","packets":N,"seconds":S,"pps":P,"enobufs":E,"extra":X,...}
 *
 * Exits 2 (with a message on stderr, and the JSON line with the count so
 * far) if N packets are not seen within TIMEOUT_SECONDS (default 60) of
 * READY, or if none arrives for IDLE_SECONDS (default 3) once packets have
 * started to come.
 *
 * With the last argument "stream" (the stream and overload scenarios: the
 * consumer runs while the packets are sent, and some may be lost), running
 * out of packets for IDLE_SECONDS is the normal end: the consumer exits 0
 * and reports the packets it handled, with "seconds" from the first recv()
 * to the last packet handled (the callback then reads the clock for every
 * packet).  "rss=K" is the same, and every K packets the resident set size
 * is read from /proc/self/statm, reported as "rss":[[packets,bytes],...]
 * (the first sample, at 0, is taken before READY).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <libnetfilter_log/libnetfilter_log.h>

#define MAX_RSS_SAMPLES 4096

static unsigned long rss_at[MAX_RSS_SAMPLES];
static unsigned long rss_bytes[MAX_RSS_SAMPLES];
static unsigned int rss_n;

/* Append (count, resident set size) to the samples. */
static void rss_sample(unsigned long count)
{
	unsigned long size, resident;
	FILE *f;

	if (rss_n >= MAX_RSS_SAMPLES)
		return;
	f = fopen("/proc/self/statm", "r");
	if (!f)
		return;
	if (fscanf(f, "%lu %lu", &size, &resident) == 2) {
		rss_at[rss_n] = count;
		rss_bytes[rss_n] = resident * (unsigned long)sysconf(_SC_PAGESIZE);
		rss_n++;
	}
	fclose(f);
}

/* room for one message with a full 0xffff copy and its attributes */
#define RECV_BUF_BYTES (0xffff + 8192)

struct state {
	unsigned long npackets;
	unsigned long done;
	unsigned long no_timestamp;
	unsigned long with_prefix;
	uint64_t payload_bytes;
	uint64_t indev_sum;
	double t_nth;
	double t_last;
	int stream;
	unsigned long rss_every;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* User + system CPU seconds this process has used. */
static double cpu_now(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0.0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* CPU seconds used when READY was printed */
static double cpu0;

static void die(const char *what)
{
	fprintf(stderr, "nflog_ref: %s: %s\n", what, strerror(errno));
	exit(1);
}

static unsigned long parse_ulong(const char *s, const char *name,
				 unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || *s == '\0' || *end != '\0' || v > max) {
		fprintf(stderr, "nflog_ref: bad %s: %s\n", name, s);
		exit(64);
	}
	return v;
}

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
	       "\"payload_bytes\":%llu,\"cpu_seconds\":%.3f",
	       st->done > st->npackets ? st->npackets : st->done, secs,
	       secs > 0 ? (double)st->done / secs : 0.0, enobufs, extra, rcvbuf, recvs,
	       st->with_prefix, st->no_timestamp,
	       (unsigned long long)st->payload_bytes, cpu_now() - cpu0);
	if (st->rss_every) {
		unsigned int i;

		printf(",\"rss\":[");
		for (i = 0; i < rss_n; i++)
			printf("%s[%lu,%lu]", i ? "," : "", rss_at[i], rss_bytes[i]);
		printf("]");
	}
	printf("}\n");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	unsigned long group, rcvbuf_req, timeout_s = 60, idle_s = 3;
	unsigned long enobufs = 0, recvs = 0, extra = 0;
	struct state st;
	struct nflog_handle *h;
	struct nflog_g_handle *gh;
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };
	double t_first = 0.0, t_progress = 0.0, deadline;
	unsigned long done_seen = 0;
	int fd, rcvbuf;
	socklen_t optlen = sizeof(rcvbuf);
	char *buf;

	if (argc < 4 || argc > 7 ||
	    (argc == 7 && strcmp(argv[6], "stream") != 0 &&
	     strncmp(argv[6], "rss=", 4) != 0)) {
		fprintf(stderr,
			"usage: %s GROUP N RCVBUF_BYTES [TIMEOUT_SECONDS "
			"[IDLE_SECONDS [stream]]]\n", argv[0]);
		return 64;
	}
	memset(&st, 0, sizeof(st));
	group = parse_ulong(argv[1], "group", 65535);
	st.npackets = parse_ulong(argv[2], "packet count", 0xffffffffUL);
	rcvbuf_req = parse_ulong(argv[3], "receive buffer size", 0x3fffffffUL);
	if (argc >= 5)
		timeout_s = parse_ulong(argv[4], "timeout", 86400);
	if (argc >= 6)
		idle_s = parse_ulong(argv[5], "idle timeout", 86400);
	st.stream = argc == 7;
	if (argc == 7 && strncmp(argv[6], "rss=", 4) == 0) {
		st.rss_every = parse_ulong(argv[6] + 4, "rss interval", 1UL << 30);
		if (st.rss_every == 0) {
			fprintf(stderr, "nflog_ref: bad rss interval\n");
			return 64;
		}
	}
	if (st.npackets == 0) {
		fprintf(stderr, "nflog_ref: packet count must be > 0\n");
		return 64;
	}

	buf = malloc(RECV_BUF_BYTES);
	if (!buf)
		die("malloc");

	h = nflog_open();
	if (!h)
		die("nflog_open");
	fd = nflog_fd(h);

	rcvbuf = (int)rcvbuf_req;
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
				} else if (st.done && t - t_progress > (double)idle_s) {
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
	fprintf(stderr, "nflog_ref: no packet for %lu s after %lu of %lu\n",
		idle_s, st.done, st.npackets);
fail:
	report(&st, 0.0, enobufs, 0, recvs, rcvbuf);
	nflog_unbind_group(gh);
	nflog_close(h);
	free(buf);
	return 2;
}
