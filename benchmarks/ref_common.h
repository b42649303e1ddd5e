// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ref_common.h: what the C reference consumers nfq_ref.c and nflog_ref.c
 * share besides their command line (ref_args.h): the clocks, fatal errors,
 * and the resident-set-size samples of --rss-every.
 */
#ifndef NFB_REF_COMMON_H
#define NFB_REF_COMMON_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/resource.h>
#include <sys/time.h>

#include "ref_args.h"

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

/* The samples as the JSON member ,"rss":[[packets,bytes],...] */
static void rss_print(void)
{
	unsigned int i;

	printf(",\"rss\":[");
	for (i = 0; i < rss_n; i++)
		printf("%s[%lu,%lu]", i ? "," : "", rss_at[i], rss_bytes[i]);
	printf("]");
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
	fprintf(stderr, "%s: %s: %s\n", ref_prog, what, strerror(errno));
	exit(1);
}

#endif /* NFB_REF_COMMON_H */
