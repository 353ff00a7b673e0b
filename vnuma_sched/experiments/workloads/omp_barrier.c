// SPDX-License-Identifier: GPL-2.0
/*
 * omp-barrier: T OpenMP threads (OMP_NUM_THREADS), each first-touches its own
 * block of memory, then ITERATIONS rounds of compute on its block followed by
 * a barrier, in the spirit of NPB's lu/cg. With GOMP_SPINCOUNT=0 the threads
 * sleep in futex at every barrier and wake up again: where they wake up
 * (which node, relative to their block) decides the run time.
 *
 *   omp-barrier [iterations [kib_per_thread [passes]]]
 *
 * Prints one line with "iter_per_s=<float>", the workload's score, and
 * "remote_run_fraction=<float>": the share of the compute phases' time that
 * threads spent on a node other than the one holding most of their block
 * (page nodes from move_pages(2) after the first touch and again every
 * HOME_EVERY iterations, since NUMA balancing may migrate the pages; the node
 * a phase ran on from getcpu(2) at its start and end, half each when they
 * differ). On real NUMA hardware that share is what turns misplacement into
 * time. Left out when the kernel cannot tell page nodes (no move_pages(2)).
 *
 * With OMP_BARRIER_PER_THREAD=1 each thread also writes a line to stderr:
 * "thread=<n> home=<node after the first touch> on_home=<share of iterations
 * started on their block's node> node_changes=<times an iteration started on
 * another node than the last one ended on> home_moves=<times the block's node
 * was found changed>", which tells a few threads kept away from their memory
 * from all threads moving back and forth, and memory that followed a thread.
 */
#define _GNU_SOURCE
#include <omp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_NODES 64
#define HOME_EVERY 100	/* iterations between two looks at the block's node */

/* The node holding most of [block, block + bytes), or -1 when unknown. */
static int block_node(void *block, size_t bytes)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t count = bytes / page, i;
	void **pages = malloc(count * sizeof(*pages));
	int *status = malloc(count * sizeof(*status));
	int votes[MAX_NODES] = { 0 }, best = -1;

	if (!pages || !status || !count)
		goto out;
	for (i = 0; i < count; i++)
		pages[i] = (char *)block + i * page;
	if (syscall(SYS_move_pages, 0, count, pages, NULL, status, 0))
		goto out;
	for (i = 0; i < count; i++)
		if (status[i] >= 0 && status[i] < MAX_NODES)
			votes[status[i]]++;
	for (i = 0; i < MAX_NODES; i++)
		if (votes[i] && (best < 0 || votes[i] > votes[best]))
			best = i;
out:
	free(pages);
	free(status);
	return best;
}

static int current_node(void)
{
	unsigned int cpu, node;

	return getcpu(&cpu, &node) ? -1 : (int)node;
}

int main(int argc, char **argv)
{
	long iterations = argc > 1 ? atol(argv[1]) : 2000;
	long kib = argc > 2 ? atol(argv[2]) : 256;
	long passes = argc > 3 ? atol(argv[3]) : 1;
	size_t n = (size_t)kib * 1024 / sizeof(double);
	int threads = omp_get_max_threads();
	const char *per_thread = getenv("OMP_BARRIER_PER_THREAD");
	int report = per_thread && per_thread[0] == '1';
	double t0 = 0, t1 = 0, checksum = 0, remote = 0, busy = 0;

	if (iterations <= 0 || kib <= 0 || passes <= 0 || n < 8) {
		fprintf(stderr, "usage: omp-barrier [iterations [kib_per_thread [passes]]]\n");
		return 2;
	}
#pragma omp parallel reduction(+:checksum, remote, busy)
	{
		double *block = malloc(n * sizeof(double));
		double start, end;
		size_t i;
		long it, p, on_home = 0, changes = 0, moves = 0;
		int first, home, now, a, b, last = -1;

		if (!block)
			abort();
		for (i = 0; i < n; i++)		/* first touch: the block lives here */
			block[i] = omp_get_thread_num() + i * 1e-9;
		home = first = block_node(block, n * sizeof(double));
#pragma omp barrier
#pragma omp single
		t0 = omp_get_wtime();
		for (it = 0; it < iterations; it++) {
			if (it && it % HOME_EVERY == 0 && home >= 0) {
				now = block_node(block, n * sizeof(double));
				moves += now >= 0 && now != home;
				home = now >= 0 ? now : home;
			}
			a = current_node();
			start = omp_get_wtime();
			for (p = 0; p < passes; p++)
				for (i = 0; i < n; i += 8)	/* one cache line per step */
					block[i] = block[i] * 0.999 + 1.0;
			end = omp_get_wtime();
			b = current_node();
			on_home += a == home;
			changes += last >= 0 && a != last;
			last = b;
			if (home >= 0) {	/* no move_pages(2): not known */
				busy += end - start;
				remote += (end - start) * ((a != home) + (b != home)) / 2.0;
			}
#pragma omp barrier
		}
		if (report)
			fprintf(stderr, "thread=%d home=%d on_home=%.3f node_changes=%ld home_moves=%ld\n",
				omp_get_thread_num(), first, (double)on_home / iterations, changes,
				moves);
#pragma omp single
		t1 = omp_get_wtime();
		for (i = 0; i < n; i += 8)
			checksum += block[i];
		free(block);
	}
	printf("omp-barrier threads=%d iterations=%ld kib=%ld seconds=%.6f checksum=%.1f ",
	       threads, iterations, kib, t1 - t0, checksum);
	if (busy > 0)
		printf("remote_run_fraction=%.6f ", remote / busy);
	printf("iter_per_s=%.3f\n", iterations / (t1 - t0));
	return 0;
}
