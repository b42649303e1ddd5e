// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * nfq_ref: the C reference NFQUEUE consumer for benchmarks/bench_nfqueue.py.
 *
 * A deliberately ordinary consumer built on libnetfilter_queue's libmnl-based
 * API: one recv per packet, nfq_nlmsg_parse() on it, and ONE NF_ACCEPT verdict
 * per packet, each sent with its own mnl_socket_sendto().
 *
 *   nfq_ref QUEUE_NUM N MAX_QUEUE_LEN [TIMEOUT_SECONDS]
 *
 * Binds the queue (copy packet, range 0xffff, queue max len MAX_QUEUE_LEN),
 * forces a 64 MiB receive buffer, prints "READY" once bound, then accepts
 * packets.  The clock starts when the first packet is received and stops after
 * the N-th verdict has been sent; then one JSON line is printed:
 *
 *   {"impl":"c","packets":N,"seconds":S,"pps":P}
 *
 * Exits 2 (with a message on stderr) if N packets are not done within
 * TIMEOUT_SECONDS (default 60) of READY.
 *
 * Options (before the positional arguments) for the stream and overload
 * scenarios; without them the consumer behaves as described above:
 *
 *   --batch        after a blocking recv, also read every message that is
 *                  readable right away, then accept them all with ONE
 *                  NFQNL_MSG_VERDICT_BATCH up to the highest packet id
 *   --idle S       stop S seconds (may be fractional) after the last packet
 *                  even if fewer than N came (packets were lost); exit 0 and
 *                  report "seconds" from the first packet received to the
 *                  last verdict sent
 *   --rcvbuf B     force a receive buffer of B bytes instead of 64 MiB
 *   --rss-every K  every K packets, read the resident set size from
 *                  /proc/self/statm; reported as "rss":[[packets,bytes],...]
 *                  (the first sample, at 0, is taken before READY)
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define RCVBUF_BYTES (64 << 20)
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

static void die(const char *what)
{
	fprintf(stderr, "nfq_ref: %s: %s\n", what, strerror(errno));
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
		fprintf(stderr, "nfq_ref: bad %s: %s\n", name, s);
		exit(64);
	}
	return v;
}

/* Send one config message and wait for the kernel's ack. */
static void config_send(struct mnl_socket *nl, struct nlmsghdr *nlh,
			const char *what)
{
	char ack[MNL_SOCKET_BUFFER_SIZE];
	uint32_t seq = (uint32_t)time(NULL) ^ (uint32_t)getpid();
	ssize_t n;
	int rc;

	nlh->nlmsg_flags |= NLM_F_ACK;
	nlh->nlmsg_seq = seq;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
		die(what);
	n = mnl_socket_recvfrom(nl, ack, sizeof(ack));
	if (n < 0)
		die(what);
	rc = mnl_cb_run(ack, (size_t)n, seq, mnl_socket_get_portid(nl), NULL,
			NULL);
	if (rc < 0)
		die(what);
}

/* Accept every packet message in buf[0..n): one verdict each (single mode),
 * or only note the highest id (batch mode).  Returns packets seen. */
static unsigned long handle_buf(struct mnl_socket *nl, char *buf, ssize_t n,
				unsigned long queue_num, int batch,
				uint32_t *max_id, unsigned long room)
{
	struct nlattr *attr[NFQA_MAX + 1];
	char vbuf[MNL_SOCKET_BUFFER_SIZE];
	struct nfqnl_msg_packet_hdr *ph;
	struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
	unsigned long seen = 0;
	int len = (int)n;

	/* one packet per datagram (the kernel sends one per skb), but walk the
	 * buffer in case there are several messages */
	while (seen < room && mnl_nlmsg_ok(nlh, len)) {
		if (nlh->nlmsg_type == NLMSG_ERROR || nlh->nlmsg_type == NLMSG_DONE ||
		    nlh->nlmsg_type == NLMSG_NOOP)
			goto next;
		if (nfq_nlmsg_parse(nlh, attr) < 0) {
			fprintf(stderr, "nfq_ref: bad packet message\n");
			exit(1);
		}
		if (!attr[NFQA_PACKET_HDR]) {
			fprintf(stderr, "nfq_ref: no packet header\n");
			exit(1);
		}
		ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
		if (batch) {
			uint32_t id = ntohl(ph->packet_id);

			if (id > *max_id)
				*max_id = id;
		} else {
			struct nlmsghdr *v;

			v = nfq_nlmsg_put(vbuf, NFQNL_MSG_VERDICT, (uint32_t)queue_num);
			nfq_nlmsg_verdict_put(v, (int)ntohl(ph->packet_id), NF_ACCEPT);
			if (mnl_socket_sendto(nl, v, v->nlmsg_len) < 0)
				die("mnl_socket_sendto verdict");
		}
		seen++;
next:
		nlh = mnl_nlmsg_next(nlh, &len);
	}
	return seen;
}

static const struct option long_opts[] = {
	{ "batch", no_argument, NULL, 'b' },
	{ "idle", required_argument, NULL, 'i' },
	{ "rcvbuf", required_argument, NULL, 'r' },
	{ "rss-every", required_argument, NULL, 's' },
	{ NULL, 0, NULL, 0 },
};

int main(int argc, char **argv)
{
	unsigned long queue_num, npackets, max_len, timeout_s = 60;
	unsigned long recv_calls = 0, verdict_msgs = 0, rss_every = 0, rss_next = 0;
	struct mnl_socket *nl;
	struct nlmsghdr *nlh;
	size_t buf_size;
	char *buf;
	unsigned long done = 0;
	double t_first = 0.0, t_end = 0.0, deadline, idle_s = 0.0, cpu0;
	int one = 1, rcvbuf = RCVBUF_BYTES, batch = 0, opt, idled = 0;
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };

	while ((opt = getopt_long(argc, argv, "bi:r:s:", long_opts, NULL)) != -1) {
		switch (opt) {
		case 'b':
			batch = 1;
			break;
		case 'i': {
			char *end;

			idle_s = strtod(optarg, &end);
			if (*optarg == '\0' || *end != '\0' || !(idle_s > 0) ||
			    idle_s > 3600) {
				fprintf(stderr, "nfq_ref: bad --idle: %s\n", optarg);
				return 64;
			}
			break;
		}
		case 'r':
			rcvbuf = (int)parse_ulong(optarg, "--rcvbuf", 1UL << 30);
			break;
		case 's':
			rss_every = parse_ulong(optarg, "--rss-every", 1UL << 30);
			rss_next = rss_every;
			break;
		default:
			return 64;
		}
	}
	argc -= optind - 1;
	argv += optind - 1;
	if (argc < 4 || argc > 5) {
		fprintf(stderr,
			"usage: %s [--batch] [--idle S] [--rcvbuf B] QUEUE_NUM N "
			"MAX_QUEUE_LEN [TIMEOUT_SECONDS]\n", argv[0]);
		return 64;
	}
	queue_num = parse_ulong(argv[1], "queue number", 65535);
	npackets = parse_ulong(argv[2], "packet count", 0xffffffffUL);
	max_len = parse_ulong(argv[3], "max queue length", 0xffffffffUL);
	if (argc == 5)
		timeout_s = parse_ulong(argv[4], "timeout", 86400);
	if (npackets == 0) {
		fprintf(stderr, "nfq_ref: packet count must be > 0\n");
		return 64;
	}

	/* room for a full 0xffff copy plus the netlink/attribute headers */
	buf_size = 0xffff + (MNL_SOCKET_BUFFER_SIZE / 2);
	buf = malloc(buf_size);
	if (!buf)
		die("malloc");

	nl = mnl_socket_open(NETLINK_NETFILTER);
	if (!nl)
		die("mnl_socket_open");
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0)
		die("mnl_socket_bind");

	if (setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUFFORCE,
		       &rcvbuf, sizeof(rcvbuf)) < 0)
		die("SO_RCVBUFFORCE");
	/* as the libnetfilter_queue example does: don't report ENOBUFS */
	mnl_socket_setsockopt(nl, NETLINK_NO_ENOBUFS, &one, sizeof(one));

	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, (uint32_t)queue_num);
	nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, NFQNL_CFG_CMD_BIND);
	config_send(nl, nlh, "bind queue");

	nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, (uint32_t)queue_num);
	nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, 0xffff);
	nfq_nlmsg_cfg_put_qmaxlen(nlh, (uint32_t)max_len);
	config_send(nl, nlh, "set queue params");

	/* a receive timeout so the deadline is checked while idle */
	if (setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVTIMEO, &tv,
		       sizeof(tv)) < 0)
		die("SO_RCVTIMEO");

	if (rss_every)
		rss_sample(0);
	cpu0 = cpu_now();
	printf("READY\n");
	fflush(stdout);
	deadline = now() + (double)timeout_s;

	while (done < npackets) {
		uint32_t max_id = 0;
		unsigned long got;
		ssize_t n;

		recv_calls++;
		n = mnl_socket_recvfrom(nl, buf, buf_size);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK ||
			    errno == EINTR || errno == ENOBUFS) {
				double t = now();

				if (t > deadline)
					goto timeout;
				if (idle_s > 0 && done > 0 && t - t_end > idle_s) {
					idled = 1;
					break;
				}
				continue;
			}
			die("mnl_socket_recvfrom");
		}
		if (done == 0)
			t_first = now();
		got = handle_buf(nl, buf, n, queue_num, batch, &max_id,
				 npackets - done);
		if (batch) {
			/* everything readable now, then one verdict for all */
			while (done + got < npackets) {
				recv_calls++;
				n = recv(mnl_socket_get_fd(nl), buf, buf_size,
					 MSG_DONTWAIT);
				if (n < 0) {
					if (errno == EINTR || errno == ENOBUFS)
						continue;
					break;
				}
				got += handle_buf(nl, buf, n, queue_num, batch,
						  &max_id, npackets - done - got);
			}
			if (got) {
				char vbuf[MNL_SOCKET_BUFFER_SIZE];
				struct nlmsghdr *v;

				v = nfq_nlmsg_put(vbuf, NFQNL_MSG_VERDICT_BATCH,
						  (uint32_t)queue_num);
				nfq_nlmsg_verdict_put(v, (int)max_id, NF_ACCEPT);
				if (mnl_socket_sendto(nl, v, v->nlmsg_len) < 0)
					die("mnl_socket_sendto batch verdict");
				verdict_msgs++;
			}
		} else {
			verdict_msgs += got;
		}
		done += got;
		if (got && (idle_s > 0 || done == npackets))
			t_end = now();
		while (rss_every && done >= rss_next) {
			rss_sample(rss_next);
			rss_next += rss_every;
		}
		if (done < npackets && now() > deadline)
			goto timeout;
	}

	{
		double secs = t_end - t_first;

		printf("{\"impl\":\"c\",\"packets\":%lu,\"seconds\":%.6f,"
		       "\"pps\":%.1f,\"mode\":\"%s\",\"idle_stop\":%s,"
		       "\"recv_calls\":%lu,\"verdict_msgs\":%lu,\"rcvbuf\":%d,"
		       "\"cpu_seconds\":%.3f",
		       done, secs, secs > 0 ? (double)done / secs : 0.0,
		       batch ? "batch" : "single", idled ? "true" : "false",
		       recv_calls, verdict_msgs, rcvbuf, cpu_now() - cpu0);
		if (rss_every) {
			unsigned int i;

			printf(",\"rss\":[");
			for (i = 0; i < rss_n; i++)
				printf("%s[%lu,%lu]", i ? "," : "", rss_at[i],
				       rss_bytes[i]);
			printf("]");
		}
		printf("}\n");
		fflush(stdout);
	}
	mnl_socket_close(nl);
	free(buf);
	return 0;

timeout:
	fprintf(stderr, "nfq_ref: timeout: %lu of %lu packets after %lu s\n",
		done, npackets, timeout_s);
	mnl_socket_close(nl);
	free(buf);
	return 2;
}
