/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared constants of the vnuma_sched probes (bcc dialect: compiled by bcc's
 * clang at load time). vnuma_sched/probes/events.py mirrors these values; a
 * test checks that both sides agree.
 *
 * Parameters come only as integer -D flags from the loader:
 *   MAX_CPUS, MAX_NODES, HAVE_IPI_SEND_CPU, HAVE_KPROBES, HAVE_NUMA_TP,
 *   HAVE_MIGRATE_COMM (sched_migrate_task still has comm; gone in newer kernels),
 *   WITH_EVENTS, BALANCE_FN_KPROBE (the load-balance function can be
 *   probed), PREEMPTED_FN_KRETPROBE (vcpu_is_preempted can be probed).
 */
#ifndef VNUMA_H
#define VNUMA_H

#include <uapi/linux/ptrace.h>	/* struct pt_regs for the kprobe handlers */

/* IPI counters, per receiving CPU */
#define IPI_RESCHED		0
#define IPI_CALL_SINGLE		1
#define IPI_CALL_FUNC		2
#define IPI_IDLE_NO_IPI		3
#define NR_IPI			4

/* Migration causes */
#define CAUSE_WAKE		0
#define CAUSE_NEWIDLE		1
#define CAUSE_PERIODIC		2
#define CAUSE_NOHZ		3
#define CAUSE_NUMA		4
#define CAUSE_OTHER		5
#define NR_CAUSES		6

/* load_balance()'s enum cpu_idle_type: CPU_NEWLY_IDLE is 2 in 6.1 and 6.12 */
#define IDLE_NEWLY		2

/* Idle states tracked by the halt probe (power:cpu_idle state index) */
#define MAX_IDLE_STATES		8
#define HIST_SLOTS		32

/* One migration event (perf buffer, with --events) */
struct migrate_event {
	u64 ts;
	u32 pid;
	u32 orig_cpu;
	u32 dest_cpu;
	u32 cur_cpu;
	u8 cause;
	u8 dest_idle;
	u8 cross_node;
	u8 pad;
	char comm[16];
};

#endif
