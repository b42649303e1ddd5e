// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * nfb_udp: UDP traffic helper for benchmarks/bench_nfqueue.py.
 *
 *   nfb_udp send PORT N SIZE
 *       send N datagrams of SIZE payload bytes to 127.0.0.1:PORT as fast as
 *       possible, then print {"sent":N}
 *
 *   nfb_udp recv PORT N TIMEOUT_SECONDS
 *       bind 127.0.0.1:PORT with a forced 128 MiB receive buffer, print READY,
 *       then count datagrams until N have arrived, SIGTERM/SIGINT, or the
 *       timeout; print {"received":COUNT}
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned long arg(const char *s, const char *name, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || *s == '\0' || *end != '\0' || v > max) {
		fprintf(stderr, "nfb_udp: bad %s: %s\n", name, s);
		exit(64);
	}
	return v;
}

static struct sockaddr_in loopback(unsigned long port)
{
	struct sockaddr_in sa;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sa;
}

static int do_send(unsigned long port, unsigned long n, unsigned long size)
{
	struct sockaddr_in sa = loopback(port);
	unsigned long sent = 0, retries = 0;
	char *payload;
	int fd;

	payload = calloc(1, size ? size : 1);
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (!payload || fd < 0 ||
	    connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("nfb_udp send: setup");
		return 1;
	}
	while (sent < n) {
		if (send(fd, payload, size, 0) < 0) {
			/* transient local congestion: retry, but boundedly */
			if ((errno == ENOBUFS || errno == EAGAIN ||
			     errno == EINTR) && retries < 100000) {
				retries++;
				continue;
			}
			perror("nfb_udp send");
			fprintf(stderr, "nfb_udp: sent %lu of %lu\n", sent, n);
			return 1;
		}
		sent++;
	}
	printf("{\"sent\":%lu,\"retries\":%lu}\n", sent, retries);
	return 0;
}

static int do_recv(unsigned long port, unsigned long n, unsigned long timeout)
{
	struct sockaddr_in sa = loopback(port);
	int fd, rcvbuf = 128 << 20;
	unsigned long count = 0;
	struct sigaction act;
	double deadline;
	char buf[65536];

	memset(&act, 0, sizeof(act));
	act.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
	sigaction(SIGTERM, &act, NULL);
	sigaction(SIGINT, &act, NULL);

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf,
				 sizeof(rcvbuf)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("nfb_udp recv: setup");
		return 1;
	}
	printf("READY\n");
	fflush(stdout);
	deadline = now() + (double)timeout;

	while (count < n && !stop_flag && now() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };

		if (poll(&pfd, 1, 100) < 0 && errno != EINTR) {
			perror("nfb_udp recv: poll");
			break;
		}
		while (count < n) {
			ssize_t r = recv(fd, buf, sizeof(buf), 0);

			if (r < 0)
				break;
			count++;
		}
	}
	printf("{\"received\":%lu}\n", count);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "send") == 0)
		return do_send(arg(argv[2], "port", 65535),
			       arg(argv[3], "count", 0xffffffffUL),
			       arg(argv[4], "size", 65507));
	if (argc == 5 && strcmp(argv[1], "recv") == 0)
		return do_recv(arg(argv[2], "port", 65535),
			       arg(argv[3], "count", 0xffffffffUL),
			       arg(argv[4], "timeout", 86400));
	fprintf(stderr, "usage: %s send PORT N SIZE | recv PORT N TIMEOUT\n",
		argv[0]);
	return 64;
}
