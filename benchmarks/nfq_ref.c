// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * nfq_ref: the C reference NFQUEUE consumer for benchmarks/bench_nfqueue.py.
 *
 * A deliberately ordinary consumer built on libnetfilter_queue's libmnl-based
 * API: one recv per packet, nfq_nlmsg_parse() on it, and ONE NF_ACCEPT verdict
 * per packet, each sent with its own mnl_socket_sendto().
 *
 *   nfq_ref [--batch] [--batch-size K] [--fields] [--idle S] [--rcvbuf B] [--rss-every K]
 *           [--timeout T] QUEUE_NUM N MAX_QUEUE_LEN
 *
 * (the command line is ref_args.h's, shared with nflog_ref.c).  Binds the
 * queue (copy packet, range 0xffff, queue max len MAX_QUEUE_LEN), forces the
 * receive buffer (--rcvbuf, default 64 MiB), prints "READY" once bound, then
 * accepts packets.  The clock starts when the first packet is received and
 * stops after the N-th verdict has been sent; then one JSON line is printed:
 *
 *   {"impl":"c","packets":N,"seconds":S,"pps":P}
 *
 * Exits 2 (with a message on stderr) if N packets are not done within
 * --timeout seconds (default 60) of READY.
 *
 * Options for the stream and overload scenarios; without them the consumer
 * behaves as described above:
 *
 *   --batch        after a blocking recv, also read every message that is
 *                  readable right away, then accept them all with ONE
 *                  NFQNL_MSG_VERDICT_BATCH up to the highest packet id
 *   --batch-size K as --batch, but at most K packets per batch verdict (the
 *                  reads stop at K; a read holds one message)
 *   --fields       read what a handler reading five fields reads: the
 *                  payload length, the mark, the input interface, the
 *                  hardware protocol and the timestamp of every packet
 *                  (from the attributes nfq_nlmsg_parse() found), summed
 *                  and reported as "payload_bytes", "mark_sum",
 *                  "indev_sum", "hw_protocol_sum", "no_timestamp",
 *                  "timestamp_sum_us"
 *   --idle S       stop S seconds (may be fractional) after the last packet
 *                  even if fewer than N came (packets were lost); exit 0 and
 *                  report "seconds" from the first packet received to the
 *                  last verdict sent
 *   --rss-every K  every K packets, sample the resident set size
 */
#include <endian.h>
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

#include "ref_args.h"
#include "ref_common.h"

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

/* what --fields reads, summed so that reading it is not dead code */
struct field_sums {
	int on;
	uint64_t payload_bytes, mark_sum, indev_sum, hw_protocol_sum, ts_sum;
	unsigned long no_timestamp;
};

static struct field_sums fsums;

static void read_fields(struct nlattr **attr, const struct nfqnl_msg_packet_hdr *ph)
{
	if (attr[NFQA_PAYLOAD])
		fsums.payload_bytes += mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
	if (attr[NFQA_MARK])
		fsums.mark_sum += ntohl(mnl_attr_get_u32(attr[NFQA_MARK]));
	if (attr[NFQA_IFINDEX_INDEV])
		fsums.indev_sum += ntohl(mnl_attr_get_u32(attr[NFQA_IFINDEX_INDEV]));
	fsums.hw_protocol_sum += ntohs(ph->hw_protocol);
	if (attr[NFQA_TIMESTAMP]) {
		const struct nfqnl_msg_packet_timestamp *ts =
			mnl_attr_get_payload(attr[NFQA_TIMESTAMP]);

		fsums.ts_sum += be64toh(ts->sec) * 1000000 + be64toh(ts->usec);
	} else {
		fsums.no_timestamp++;
	}
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
		if (fsums.on)
			read_fields(attr, ph);
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

int main(int argc, char **argv)
{
	struct ref_args args;
	unsigned long queue_num, npackets, max_len, timeout_s;
	unsigned long recv_calls = 0, verdict_msgs = 0, rss_every, rss_next;
	struct mnl_socket *nl;
	struct nlmsghdr *nlh;
	size_t buf_size;
	char *buf;
	unsigned long done = 0;
	double t_first = 0.0, t_end = 0.0, deadline, idle_s, cpu0;
	int one = 1, rcvbuf, batch, idled = 0;
	struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };

	ref_parse_args(argc, argv, "nfq_ref", REF_BATCH | REF_FIELDS | REF_MAX_LEN, &args);
	fsums.on = args.fields;
	queue_num = args.num;
	npackets = args.npackets;
	max_len = args.max_len;
	timeout_s = args.timeout_s;
	idle_s = args.idle_s;
	rcvbuf = args.rcvbuf;
	rss_every = rss_next = args.rss_every;
	batch = args.batch;

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
			while (done + got < npackets &&
			       (!args.batch_size || got < args.batch_size)) {
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
		       "\"batch_size\":%lu,\"cpu_seconds\":%.3f",
		       done, secs, secs > 0 ? (double)done / secs : 0.0,
		       batch ? "batch" : "single", idled ? "true" : "false",
		       recv_calls, verdict_msgs, rcvbuf, args.batch_size, cpu_now() - cpu0);
		if (fsums.on)
			printf(",\"fields\":\"payload_len,mark,indev,hw_protocol,timestamp\","
			       "\"payload_bytes\":%llu,\"mark_sum\":%llu,\"indev_sum\":%llu,"
			       "\"hw_protocol_sum\":%llu,\"no_timestamp\":%lu,"
			       "\"timestamp_sum_us\":%llu",
			       (unsigned long long)fsums.payload_bytes,
			       (unsigned long long)fsums.mark_sum,
			       (unsigned long long)fsums.indev_sum,
			       (unsigned long long)fsums.hw_protocol_sum, fsums.no_timestamp,
			       (unsigned long long)fsums.ts_sum);
		if (rss_every)
			rss_print();
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
