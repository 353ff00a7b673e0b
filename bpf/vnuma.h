/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared constants of the vnuma_sched probes (bcc dialect: compiled by bcc's
 * clang at load time). vnuma_sched/probes/events.py mirrors these values; a
 * test checks that both sides agree.
 *
 * Parameters come only as integer -D flags from the loader:
 *   MAX_CPUS, MAX_NODES, MAX_NODE_CPUS (CPUs of the largest node),
 *   HAVE_IPI_SEND_CPU, HAVE_KPROBES, HAVE_NUMA_TP,
 *   HAVE_MIGRATE_COMM (sched_migrate_task still has comm; gone in newer kernels),
 *   WITH_EVENTS, BALANCE_FN_KPROBE (the load-balance function can be
 *   probed), PREEMPTED_FN_KRETPROBE (vcpu_is_preempted can be probed),
 *   HAVE_AVOIDABLE (migrate reads the task from a raw tracepoint) with the
 *   task_struct byte offsets TASK_PID_OFF, TASK_CPU_OFF, TASK_COMM_OFF,
 *   TASK_CPUS_PTR_OFF, TASK_STATE_OFF (from the running kernel's BTF, never
 *   from headers).
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

/* What the migrate probe's raw tracepoint handler saw (avoid_seen) */
#define SEEN_EXAMINED		0	/* migrations whose task was read */
#define SEEN_CROSS_CHECKED	1	/* cross-node ones checked for an idle allowed CPU */
#define SEEN_CROSS_UNREADABLE	2	/* cross-node ones whose affinity could not be read */
#define SEEN_TASK_UNREADABLE	3	/* migrations whose task could not be read (lost) */
#define NR_SEEN			4

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
	u8 avoidable;	/* cross-node with an idle allowed CPU left on the source node */
	char comm[16];
	u32 pad;
	u64 allowed;	/* the task's allowed CPUs 0-63 (0: not read) */
};

#endif
