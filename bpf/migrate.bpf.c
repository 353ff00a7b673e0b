/* SPDX-License-Identifier: GPL-2.0 */
/*
 * migrate: every sched_migrate_task classified by node pair, cause and
 * whether the destination CPU was idle. bcc dialect.
 *
 * Cause, in order:
 *   wake      sched_waking of the same pid was traced on this CPU by the task
 *             that now moves it (try_to_wake_up() traces sched_waking before
 *             select_task_rq() and set_task_cpu(), in the waker's context)
 *   numa      sched_move_numa / sched_swap_numa announced the pid
 *   newidle   inside the load-balance function with CPU_NEWLY_IDLE (kprobe)
 *   nohz      inside it for another CPU (nohz idle balance on its behalf)
 *   periodic  inside it for this CPU
 *   other     everything else (affinity changes, exec, hotplug; and every
 *             balance move when the load-balance function cannot be probed)
 * CPU -> node comes from user space in cpu_node (filled from the topology),
 * CPU -> last-level cache in cpu_llc. It also counts wake-ups (sched_wakeup)
 * placed on a busy CPU while another CPU of the same LLC was idle.
 */
#include "vnuma.h"

BPF_ARRAY(cpu_node, u32, MAX_CPUS);
BPF_ARRAY(cpu_llc, u32, MAX_CPUS);	/* first CPU of the last-level cache, from user space */
BPF_ARRAY(cpu_in_idle, u8, MAX_CPUS);
/* 0: wake-ups, 1: placed on a busy CPU while another CPU of its LLC was idle */
BPF_PERCPU_ARRAY(wake_place, u64, 2);
struct waking {
	u32 pid;	/* the wakee */
	u32 waker;	/* current at sched_waking: the same task calls set_task_cpu() */
};

BPF_PERCPU_ARRAY(waking, struct waking, 1);
BPF_PERCPU_ARRAY(balance_idle, s32, 1);	/* 0: not balancing; else idle type + 1 */
BPF_PERCPU_ARRAY(balance_cpu, s32, 1);
BPF_HASH(numa_pids, u32, u8, 4096);
/* [cause][dest_idle][src node][dst node] */
BPF_PERCPU_ARRAY(matrix, u64, NR_CAUSES * 2 * MAX_NODES * MAX_NODES);
#if WITH_EVENTS
BPF_PERF_OUTPUT(events);
#endif

static __always_inline u32 node_of(u32 cpu)
{
	u32 *n = cpu_node.lookup(&cpu);

	return n && *n < MAX_NODES ? *n : 0;
}

TRACEPOINT_PROBE(power, cpu_idle)
{
	u32 cpu = args->cpu_id;
	u8 idle = args->state != (u32)-1;

	cpu_in_idle.update(&cpu, &idle);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_waking)
{
	u32 zero = 0;
	struct waking w = {};

	w.pid = args->pid;
	w.waker = (u32)bpf_get_current_pid_tgid();
	waking.update(&zero, &w);
	return 0;
}

#if HAVE_NUMA_TP
TRACEPOINT_PROBE(sched, sched_move_numa)
{
	u32 pid = args->pid;
	u8 one = 1;

	numa_pids.update(&pid, &one);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_swap_numa)
{
	u32 src = args->src_pid, dst = args->dst_pid;
	u8 one = 1;

	numa_pids.update(&src, &one);
	numa_pids.update(&dst, &one);
	return 0;
}
#endif

#if BALANCE_FN_KPROBE
/*
 * Attached by the loader to load_balance() (6.1) or sched_balance_rq() (6.12):
 * (this_cpu, this_rq, sd, idle, continue_balancing)
 */
int on_balance_enter(struct pt_regs *ctx)
{
	u32 zero = 0;
	s32 i = (s32)PT_REGS_PARM4(ctx) + 1, c = (s32)PT_REGS_PARM1(ctx);

	balance_idle.update(&zero, &i);
	balance_cpu.update(&zero, &c);
	return 0;
}

int on_balance_return(struct pt_regs *ctx)
{
	u32 zero = 0;
	s32 none = 0;

	balance_idle.update(&zero, &none);
	return 0;
}
#endif

static __always_inline void count_place(u32 k)
{
	u64 *v = wake_place.lookup(&k);

	if (v)
		(*v)++;
}

/* target_cpu is where the woken task will run */
TRACEPOINT_PROBE(sched, sched_wakeup)
{
	u32 target = args->target_cpu, c;
	u8 *target_idle = cpu_in_idle.lookup(&target);
	u32 *llc = cpu_llc.lookup(&target);

	count_place(0);
	if (!target_idle || *target_idle || !llc)
		return 0;
	for (c = 0; c < MAX_CPUS; c++) {
		u32 cpu = c;
		u32 *l = cpu_llc.lookup(&cpu);
		u8 *idle = cpu_in_idle.lookup(&cpu);

		if (cpu != target && l && idle && *l == *llc && *idle) {
			count_place(1);
			break;
		}
	}
	return 0;
}

TRACEPOINT_PROBE(sched, sched_migrate_task)
{
	u32 zero = 0, pid = args->pid, orig = args->orig_cpu, dest = args->dest_cpu;
	u32 cur = bpf_get_smp_processor_id();
	struct waking *w = waking.lookup(&zero);
	s32 *bidle = balance_idle.lookup(&zero);
	u8 *dest_idle_p = cpu_in_idle.lookup(&dest);
	u8 cause = CAUSE_OTHER, dest_idle = dest_idle_p ? *dest_idle_p : 0;
	u32 src_node = node_of(orig), dst_node = node_of(dest), idx;
	u64 *cell;

	if (w && w->pid == pid && w->waker == (u32)bpf_get_current_pid_tgid()) {
		cause = CAUSE_WAKE;
		w->pid = 0;
	} else if (numa_pids.lookup(&pid)) {
		cause = CAUSE_NUMA;
		numa_pids.delete(&pid);
	} else if (bidle && *bidle > 0) {
		if (*bidle - 1 == IDLE_NEWLY)
			cause = CAUSE_NEWIDLE;
		else if (dest != cur)
			cause = CAUSE_NOHZ;
		else
			cause = CAUSE_PERIODIC;
	}
	if (cause == CAUSE_NEWIDLE)
		dest_idle = 1;	/* the destination is the CPU going idle */
	idx = ((cause * 2 + dest_idle) * MAX_NODES + src_node) * MAX_NODES + dst_node;
	cell = matrix.lookup(&idx);
	if (cell)
		(*cell)++;
#if WITH_EVENTS
	{
		struct migrate_event ev = {};

		ev.ts = bpf_ktime_get_ns();
		ev.pid = pid;
		ev.orig_cpu = orig;
		ev.dest_cpu = dest;
		ev.cur_cpu = cur;
		ev.cause = cause;
		ev.dest_idle = dest_idle;
		ev.cross_node = src_node != dst_node;
#if HAVE_MIGRATE_COMM
		bpf_probe_read_kernel_str(&ev.comm, sizeof(ev.comm), args->comm);
#endif
		events.perf_submit(args, &ev, sizeof(ev));
	}
#endif
	return 0;
}
