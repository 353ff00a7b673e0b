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
 * Prints one line ending in "iter_per_s=<float>", the workload's score.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
	long iterations = argc > 1 ? atol(argv[1]) : 2000;
	long kib = argc > 2 ? atol(argv[2]) : 256;
	long passes = argc > 3 ? atol(argv[3]) : 1;
	size_t n = (size_t)kib * 1024 / sizeof(double);
	int threads = omp_get_max_threads();
	double t0 = 0, t1 = 0, checksum = 0;

	if (iterations <= 0 || kib <= 0 || passes <= 0 || n < 8) {
		fprintf(stderr, "usage: omp-barrier [iterations [kib_per_thread [passes]]]\n");
		return 2;
	}
#pragma omp parallel reduction(+:checksum)
	{
		double *block = malloc(n * sizeof(double));
		size_t i;
		long it, p;

		if (!block)
			abort();
		for (i = 0; i < n; i++)		/* first touch: the block lives here */
			block[i] = omp_get_thread_num() + i * 1e-9;
#pragma omp barrier
#pragma omp single
		t0 = omp_get_wtime();
		for (it = 0; it < iterations; it++) {
			for (p = 0; p < passes; p++)
				for (i = 0; i < n; i += 8)	/* one cache line per step */
					block[i] = block[i] * 0.999 + 1.0;
#pragma omp barrier
		}
#pragma omp single
		t1 = omp_get_wtime();
		for (i = 0; i < n; i += 8)
			checksum += block[i];
		free(block);
	}
	printf("omp-barrier threads=%d iterations=%ld kib=%ld seconds=%.6f checksum=%.1f "
	       "iter_per_s=%.3f\n", threads, iterations, kib, t1 - t0, checksum,
	       iterations / (t1 - t0));
	return 0;
}
