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
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define RCVBUF_BYTES (64 << 20)

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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

int main(int argc, char **argv)
{
	unsigned long queue_num, npackets, max_len, timeout_s = 60;
	struct nlattr *attr[NFQA_MAX + 1];
	struct mnl_socket *nl;
	struct nlmsghdr *nlh;
	size_t buf_size;
	char *buf;
	char vbuf[MNL_SOCKET_BUFFER_SIZE];
	unsigned long done = 0;
	double t_first = 0.0, t_end, deadline;
	int one = 1, rcvbuf = RCVBUF_BYTES;
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };

	if (argc < 4 || argc > 5) {
		fprintf(stderr,
			"usage: %s QUEUE_NUM N MAX_QUEUE_LEN [TIMEOUT_SECONDS]\n",
			argv[0]);
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

	printf("READY\n");
	fflush(stdout);
	deadline = now() + (double)timeout_s;

	while (done < npackets) {
		struct nfqnl_msg_packet_hdr *ph;
		ssize_t n;
		uint32_t id;
		int len;

		n = mnl_socket_recvfrom(nl, buf, buf_size);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK ||
			    errno == EINTR || errno == ENOBUFS) {
				if (now() > deadline)
					goto timeout;
				continue;
			}
			die("mnl_socket_recvfrom");
		}
		if (done == 0)
			t_first = now();

		/* one packet per datagram (the kernel sends one per skb), but
		 * walk the buffer in case there are several messages */
		len = (int)n;
		nlh = (struct nlmsghdr *)buf;
		while (mnl_nlmsg_ok(nlh, len)) {
			if (nlh->nlmsg_type == NLMSG_ERROR ||
			    nlh->nlmsg_type == NLMSG_DONE ||
			    nlh->nlmsg_type == NLMSG_NOOP)
				goto next;
			if (nfq_nlmsg_parse(nlh, attr) < 0) {
				fprintf(stderr, "nfq_ref: bad packet message\n");
				return 1;
			}
			if (!attr[NFQA_PACKET_HDR]) {
				fprintf(stderr, "nfq_ref: no packet header\n");
				return 1;
			}
			ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
			id = ntohl(ph->packet_id);

			{
				struct nlmsghdr *v;

				v = nfq_nlmsg_put(vbuf, NFQNL_MSG_VERDICT,
						  (uint32_t)queue_num);
				nfq_nlmsg_verdict_put(v, (int)id, NF_ACCEPT);
				if (mnl_socket_sendto(nl, v, v->nlmsg_len) < 0)
					die("mnl_socket_sendto verdict");
			}
			done++;
			if (done == npackets)
				break;
next:
			nlh = mnl_nlmsg_next(nlh, &len);
		}
		if (done < npackets && now() > deadline)
			goto timeout;
	}
	t_end = now();

	{
		double secs = t_end - t_first;

		printf("{\"impl\":\"c\",\"packets\":%lu,\"seconds\":%.6f,"
		       "\"pps\":%.1f}\n",
		       done, secs, secs > 0 ? (double)done / secs : 0.0);
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
