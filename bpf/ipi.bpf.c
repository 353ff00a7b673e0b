/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ipi: IPIs received per CPU by type, and wake-ups of polling idle CPUs that
 * needed no IPI. bcc dialect. Since 6.0, idle wake-ups arrive as
 * call-function-single IPIs (the wakelist), so both vectors are counted.
 */
#include "vnuma.h"

BPF_PERCPU_ARRAY(ipi_recv, u64, NR_IPI);

static __always_inline void count(u32 type)
{
	u64 *v = ipi_recv.lookup(&type);

	if (v)
		(*v)++;
}

TRACEPOINT_PROBE(irq_vectors, reschedule_entry)
{
	count(IPI_RESCHED);
	return 0;
}

TRACEPOINT_PROBE(irq_vectors, call_function_single_entry)
{
	count(IPI_CALL_SINGLE);
	return 0;
}

TRACEPOINT_PROBE(irq_vectors, call_function_entry)
{
	count(IPI_CALL_FUNC);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_wake_idle_without_ipi)
{
	count(IPI_IDLE_NO_IPI);
	return 0;
}

#if HAVE_IPI_SEND_CPU
/* [dst], one copy per sending CPU: the (src, dst) pairs without a hash map */
BPF_PERCPU_ARRAY(ipi_sent, u64, MAX_CPUS);

/* callback == NULL is smp_send_reschedule() */
TRACEPOINT_PROBE(ipi, ipi_send_cpu)
{
	u32 dst = args->cpu;
	u64 *v = ipi_sent.lookup(&dst);

	if (v)
		(*v)++;
	return 0;
}
#endif
