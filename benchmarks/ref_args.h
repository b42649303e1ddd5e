// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ref_args.h: the command line of the C reference consumers nfq_ref.c and
 * nflog_ref.c, parsed by one piece of code (the nfbind consumers take the
 * same, see _consumer.py).
 *
 *   PROG [--idle S] [--rcvbuf B] [--rss-every K] [--timeout T]
 *        [--batch] [--batch-size K] [--fields] [--stream] NUM N [MAX_QUEUE_LEN]
 *
 *   NUM            the queue (nfq_ref) or log group (nflog_ref), 0..65535
 *   N              packets to handle, > 0
 *   MAX_QUEUE_LEN  the queue's maximum length (nfq_ref only)
 *   --idle S       seconds without a packet after which the consumer stops
 *                  (may be fractional; what the stop means is the
 *                  consumer's: see its header comment)
 *   --rcvbuf B     the socket's receive buffer, forced (SO_RCVBUFFORCE; the
 *                  kernel doubles it), default 64 MiB
 *   --rss-every K  every K packets, read the resident set size from
 *                  /proc/self/statm; reported as "rss":[[packets,bytes],...]
 *                  (the first sample, at 0, is taken before READY)
 *   --timeout T    give up T seconds after READY (exit 2), default 60
 *   --batch        nfq_ref: one batch verdict per read (REF_BATCH)
 *   --batch-size K nfq_ref: as --batch, but a batch verdict at least every
 *                  K packets (REF_BATCH)
 *   --fields       nfq_ref: read the packet fields the nfbind fields row
 *                  reads (payload length, mark, indev, hw_protocol,
 *                  timestamp) and sum them (REF_FIELDS)
 *   --stream       nflog_ref: packets may be lost; running out of them is
 *                  the normal end (REF_STREAM)
 *
 * A bad command line prints a message and exits 64.
 */
#ifndef NFB_REF_ARGS_H
#define NFB_REF_ARGS_H

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* what a reference takes beyond the common options */
#define REF_BATCH	0x1	/* --batch */
#define REF_STREAM	0x2	/* --stream */
#define REF_MAX_LEN	0x4	/* the MAX_QUEUE_LEN argument */
#define REF_FIELDS	0x8	/* --fields */

#define REF_RCVBUF_DEFAULT (64 << 20)

struct ref_args {
	unsigned long num;		/* queue or group number */
	unsigned long npackets;		/* N */
	unsigned long max_len;		/* MAX_QUEUE_LEN (REF_MAX_LEN) */
	unsigned long timeout_s;	/* --timeout, default 60 */
	double idle_s;			/* --idle, 0 if not given */
	int rcvbuf;			/* --rcvbuf, default 64 MiB */
	unsigned long rss_every;	/* --rss-every, 0: no samples */
	int batch;			/* --batch or --batch-size */
	unsigned long batch_size;	/* --batch-size, 0: all that is readable */
	int fields;			/* --fields */
	int stream;			/* --stream */
};

/* the program's name, for messages */
static const char *ref_prog = "ref";

static unsigned long ref_ulong(const char *s, const char *name, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || *s == '\0' || *end != '\0' || v > max) {
		fprintf(stderr, "%s: bad %s: %s\n", ref_prog, name, s);
		exit(64);
	}
	return v;
}

static void ref_usage(unsigned takes)
{
	fprintf(stderr,
		"usage: %s [--idle S] [--rcvbuf B] [--rss-every K] [--timeout T]%s%s%s "
		"%s N%s\n", ref_prog,
		takes & REF_BATCH ? " [--batch] [--batch-size K]" : "",
		takes & REF_FIELDS ? " [--fields]" : "",
		takes & REF_STREAM ? " [--stream]" : "",
		takes & REF_MAX_LEN ? "QUEUE_NUM" : "GROUP",
		takes & REF_MAX_LEN ? " MAX_QUEUE_LEN" : "");
	exit(64);
}

/* Parse argv into *a; ``takes`` is a mask of REF_BATCH, REF_STREAM,
 * REF_FIELDS and REF_MAX_LEN.  Exits 64 on a bad command line. */
static void ref_parse_args(int argc, char **argv, const char *prog, unsigned takes,
			   struct ref_args *a)
{
	static const struct option opts[] = {
		{ "idle", required_argument, NULL, 'i' },
		{ "rcvbuf", required_argument, NULL, 'r' },
		{ "rss-every", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ "batch", no_argument, NULL, 'b' },
		{ "stream", no_argument, NULL, 'S' },
		{ "fields", no_argument, NULL, 'f' },
		{ "batch-size", required_argument, NULL, 'k' },
		{ NULL, 0, NULL, 0 },
	};
	int opt, npos = takes & REF_MAX_LEN ? 3 : 2;
	char *end;

	ref_prog = prog;
	memset(a, 0, sizeof(*a));
	a->timeout_s = 60;
	a->rcvbuf = REF_RCVBUF_DEFAULT;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'i':
			a->idle_s = strtod(optarg, &end);
			if (*optarg == '\0' || *end != '\0' || !(a->idle_s > 0) ||
			    a->idle_s > 3600) {
				fprintf(stderr, "%s: bad --idle: %s\n", prog, optarg);
				exit(64);
			}
			break;
		case 'r':
			a->rcvbuf = (int)ref_ulong(optarg, "--rcvbuf", 1UL << 30);
			break;
		case 's':
			a->rss_every = ref_ulong(optarg, "--rss-every", 1UL << 30);
			break;
		case 't':
			a->timeout_s = ref_ulong(optarg, "--timeout", 86400);
			break;
		case 'b':
			if (!(takes & REF_BATCH))
				ref_usage(takes);
			a->batch = 1;
			break;
		case 'S':
			if (!(takes & REF_STREAM))
				ref_usage(takes);
			a->stream = 1;
			break;
		case 'k':
			if (!(takes & REF_BATCH))
				ref_usage(takes);
			a->batch = 1;
			a->batch_size = ref_ulong(optarg, "--batch-size", 1UL << 20);
			if (!a->batch_size) {
				fprintf(stderr, "%s: --batch-size must be > 0\n", prog);
				exit(64);
			}
			break;
		case 'f':
			if (!(takes & REF_FIELDS))
				ref_usage(takes);
			a->fields = 1;
			break;
		default:
			ref_usage(takes);
		}
	}
	if (argc - optind != npos)
		ref_usage(takes);
	a->num = ref_ulong(argv[optind], takes & REF_MAX_LEN ? "queue number" : "group",
			   65535);
	a->npackets = ref_ulong(argv[optind + 1], "packet count", 0xffffffffUL);
	if (takes & REF_MAX_LEN)
		a->max_len = ref_ulong(argv[optind + 2], "max queue length", 0xffffffffUL);
	if (a->npackets == 0) {
		fprintf(stderr, "%s: packet count must be > 0\n", prog);
		exit(64);
	}
}

#endif /* NFB_REF_ARGS_H */
