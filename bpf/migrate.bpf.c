/* SPDX-License-Identifier: GPL-2.0 */
/*
 * migrate: every sched_migrate_task classified by node pair, cause and
 * whether the destination CPU was idle. bcc dialect.
 *
 * Cause, in order:
 *   wake      try_to_wake_up() moves the task: with the raw tracepoint
 *             (HAVE_AVOIDABLE) the task is TASK_WAKING at the event (ttwu sets
 *             it before select_task_rq() and set_task_cpu(); nothing else
 *             migrates a waking task); without it, sched_waking of the same pid
 *             was traced on this CPU by the task that now moves it (ttwu
 *             traces sched_waking before set_task_cpu(), in the waker's
 *             context), which needs a program on every wake-up
 *   numa      sched_move_numa / sched_swap_numa announced the pid
 *   newidle   inside the load-balance function with CPU_NEWLY_IDLE (kprobe)
 *   nohz      inside it for another CPU (nohz idle balance on its behalf)
 *   periodic  inside it for this CPU
 *   other     everything else (affinity changes, exec, hotplug; and every
 *             balance move when the load-balance function cannot be probed)
 * CPU -> node comes from user space in cpu_node (filled from the topology),
 * CPU -> last-level cache in cpu_llc. It also counts wake-ups (sched_wakeup)
 * placed on a busy CPU while another CPU of the same LLC was idle (llc_idle
 * counts the idle CPUs of each LLC as they enter and leave idle, so a wake-up
 * costs the same whatever the size of the LLC).
 *
 * cross_node_avoidable (HAVE_AVOIDABLE=1): a migration to another node while
 * the task's previous node had an idle CPU, other than the destination, that
 * the task was allowed to run on. "Previous node" is the node of task_cpu(p)
 * at the event (orig_cpu), "allowed" is p->cpus_ptr at the event, "idle" is
 * cpu_in_idle: the CPU is between power:cpu_idle entry and exit (any state,
 * polling included; a CPU idle since before the probe attached reads busy
 * until its first idle entry). The previous node's CPUs come from user space
 * in node_cpus. Counted per [cause][src node][dst node] in avoidable.
 * avoid_seen (SEEN_*) counts the migrations examined, the cross-node ones
 * checked, and those whose task or affinity could not be read: those are
 * never counted as "not avoidable" (cross_node_unchecked).
 * This needs the task_struct, so the migration handler is then a raw
 * tracepoint on sched_migrate_task (args: p, dest_cpu) reading task fields
 * at byte offsets the loader takes from the running kernel's BTF (the task
 * state too: TASK_STATE_OFF, the 32 low bits of __state); both
 * handlers feed the same counters through account(). Without BTF, or when
 * the raw tracepoint cannot be loaded, the loader builds HAVE_AVOIDABLE=0:
 * the classic tracepoint handler counts everything else and the metric is
 * reported unsupported with the reason.
 */
#include "vnuma.h"

#ifndef HAVE_AVOIDABLE
#define HAVE_AVOIDABLE 0
#endif
#ifndef MAX_NODE_CPUS	/* CPUs of the largest node: bounds the verifier's walk */
#define MAX_NODE_CPUS MAX_CPUS
#endif
#define MASK_WORDS ((MAX_CPUS + 63) / 64)
#define TASK_WAKING 0x200

BPF_ARRAY(cpu_node, u32, MAX_CPUS);
BPF_ARRAY(cpu_llc, u32, MAX_CPUS);	/* first CPU of the last-level cache, from user space */
BPF_ARRAY(cpu_in_idle, u8, MAX_CPUS);
BPF_ARRAY(llc_idle, s64, MAX_CPUS);	/* [first CPU of an LLC]: its CPUs in cpu_in_idle */
/* 0: wake-ups, 1: placed on a busy CPU while another CPU of its LLC was idle */
BPF_PERCPU_ARRAY(wake_place, u64, 2);
#if !HAVE_AVOIDABLE
struct waking {
	u32 pid;	/* the wakee */
	u32 waker;	/* current at sched_waking: the same task calls set_task_cpu() */
};

BPF_PERCPU_ARRAY(waking, struct waking, 1);
#endif
BPF_PERCPU_ARRAY(balance_idle, s32, 1);	/* 0: not balancing; else idle type + 1 */
BPF_PERCPU_ARRAY(balance_cpu, s32, 1);
BPF_HASH(numa_pids, u32, u8, 4096);
/* [cause][dest_idle][src node][dst node] */
BPF_PERCPU_ARRAY(matrix, u64, NR_CAUSES * 2 * MAX_NODES * MAX_NODES);
/* [node * MAX_NODE_CPUS + i] = (i-th CPU of the node) + 1; 0 ends the list */
BPF_ARRAY(node_cpus, u32, MAX_NODES * MAX_NODE_CPUS);
/* [cause][src node][dst node]: cross-node migrations that were avoidable */
BPF_PERCPU_ARRAY(avoidable, u64, NR_CAUSES * MAX_NODES * MAX_NODES);
BPF_PERCPU_ARRAY(avoid_seen, u64, NR_SEEN);
struct cpu_words {
	u64 w[MASK_WORDS];
};
BPF_PERCPU_ARRAY(mask_buf, struct cpu_words, 1);	/* too big for the stack */
#if WITH_EVENTS
BPF_PERF_OUTPUT(events);
#endif

static __always_inline u32 node_of(u32 cpu)
{
	u32 *n = cpu_node.lookup(&cpu);

	return n && *n < MAX_NODES ? *n : 0;
}

/*
 * A CPU entering or leaving idle: cpu_in_idle and its LLC's idle count. Only the
 * CPU itself traces its idle transitions, so each flag has one writer; the count
 * changes only when the flag does.
 */
static __always_inline void idle_change(u32 cpu, u8 idle)
{
	u8 *cur = cpu_in_idle.lookup(&cpu);
	u32 *llc;
	s64 *n;
	u32 l;

	if (!cur || *cur == idle)
		return;
	*cur = idle;
	llc = cpu_llc.lookup(&cpu);
	if (!llc)
		return;
	l = *llc;
	n = llc_idle.lookup(&l);
	if (n)
		__sync_fetch_and_add(n, idle ? 1 : -1);
}

TRACEPOINT_PROBE(power, cpu_idle)
{
	idle_change(args->cpu_id, args->state != (u32)-1);
	return 0;
}

#if !HAVE_AVOIDABLE	/* the raw tracepoint reads TASK_WAKING instead */
TRACEPOINT_PROBE(sched, sched_waking)
{
	u32 zero = 0;
	struct waking w = {};

	w.pid = args->pid;
	w.waker = (u32)bpf_get_current_pid_tgid();
	waking.update(&zero, &w);
	return 0;
}
#endif

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

/*
 * target_cpu is where the woken task will run. Placed on a busy CPU while another
 * CPU of its LLC was idle: the target being busy, any idle CPU in the LLC's count.
 */
TRACEPOINT_PROBE(sched, sched_wakeup)
{
	u32 target = args->target_cpu, l;
	u8 *target_idle = cpu_in_idle.lookup(&target);
	u32 *llc;
	s64 *n;

	count_place(0);
	if (!target_idle || *target_idle)
		return 0;
	llc = cpu_llc.lookup(&target);
	if (!llc)
		return 0;
	l = *llc;
	n = llc_idle.lookup(&l);
	if (n && *n > 0)
		count_place(1);
	return 0;
}

static __always_inline void count_seen(u32 k)
{
	u64 *v = avoid_seen.lookup(&k);

	if (v)
		(*v)++;
}

/*
 * The cause, as the header says; consumes the wake-up and NUMA markers.
 * waking: the task is TASK_WAKING (raw tracepoint; unused without it).
 */
static __always_inline u8 migration_cause(u32 pid, u32 dest, u32 cur, int waking_now)
{
	u32 zero = 0;
	s32 *bidle = balance_idle.lookup(&zero);
#if HAVE_AVOIDABLE
	if (waking_now)
		return CAUSE_WAKE;
#else
	struct waking *w = waking.lookup(&zero);

	if (w && w->pid == pid && w->waker == (u32)bpf_get_current_pid_tgid()) {
		w->pid = 0;
		return CAUSE_WAKE;
	}
#endif
	if (numa_pids.lookup(&pid)) {
		numa_pids.delete(&pid);
		return CAUSE_NUMA;
	}
	if (bidle && *bidle > 0) {
		if (*bidle - 1 == IDLE_NEWLY)
			return CAUSE_NEWIDLE;
		return dest != cur ? CAUSE_NOHZ : CAUSE_PERIODIC;
	}
	return CAUSE_OTHER;
}

/*
 * One migration into the counters. avoid: 1 avoidable, 0 not, -1 not known
 * (same node, or not examined); comm: a kernel address of 16 bytes or NULL.
 */
static __always_inline void account(void *ctx, u32 pid, u32 orig, u32 dest,
				    const void *comm, int avoid, u64 allowed, int waking_now)
{
	u32 cur = bpf_get_smp_processor_id();
	u8 *dest_idle_p = cpu_in_idle.lookup(&dest);
	u8 cause = migration_cause(pid, dest, cur, waking_now), dest_idle = dest_idle_p ? *dest_idle_p : 0;
	u32 src_node = node_of(orig), dst_node = node_of(dest), idx;
	u64 *cell;

	if (cause == CAUSE_NEWIDLE)
		dest_idle = 1;	/* the destination is the CPU going idle */
	idx = ((cause * 2 + dest_idle) * MAX_NODES + src_node) * MAX_NODES + dst_node;
	cell = matrix.lookup(&idx);
	if (cell)
		(*cell)++;
	if (avoid > 0) {
		idx = (cause * MAX_NODES + src_node) * MAX_NODES + dst_node;
		cell = avoidable.lookup(&idx);
		if (cell)
			(*cell)++;
	}
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
		ev.avoidable = avoid > 0;
		ev.allowed = allowed;
		if (comm)
			bpf_probe_read_kernel_str(&ev.comm, sizeof(ev.comm), comm);
		events.perf_submit(ctx, &ev, sizeof(ev));
	}
#endif
}

#if HAVE_AVOIDABLE
/* Is a CPU of ``node`` other than ``dest`` idle and in the mask? */
static __always_inline int idle_allowed_on(u32 node, u32 dest, struct cpu_words *mask)
{
	u32 i;

	for (i = 0; i < MAX_NODE_CPUS; i++) {
		u32 k = node * MAX_NODE_CPUS + i, cpu, word;
		u32 *slot = node_cpus.lookup(&k);
		u8 *idle;

		if (!slot || !*slot)
			break;
		cpu = *slot - 1;
		word = cpu / 64;
		if (cpu == dest || word >= MASK_WORDS)
			continue;
		idle = cpu_in_idle.lookup(&cpu);
		if (idle && *idle && (mask->w[word] >> (cpu % 64)) & 1)
			return 1;
	}
	return 0;
}

/* Attached by the loader to the raw tracepoint sched_migrate_task (p, dest_cpu). */
int on_migrate_raw(struct bpf_raw_tracepoint_args *ctx)
{
	const char *p = (const char *)ctx->args[0];
	u32 dest = (u32)ctx->args[1], pid = 0, orig = 0, zero = 0, state = 0;
	const void *cpus = NULL;
	struct cpu_words *mask = mask_buf.lookup(&zero);
	int avoid = -1, cross, have_mask = 0;

	if (bpf_probe_read_kernel(&pid, sizeof(pid), p + TASK_PID_OFF) ||
	    bpf_probe_read_kernel(&orig, sizeof(orig), p + TASK_CPU_OFF) ||
	    bpf_probe_read_kernel(&state, sizeof(state), p + TASK_STATE_OFF)) {
		count_seen(SEEN_TASK_UNREADABLE);
		return 0;
	}
	count_seen(SEEN_EXAMINED);
	cross = node_of(orig) != node_of(dest);
	if (mask && (cross || WITH_EVENTS))
		have_mask = !bpf_probe_read_kernel(&cpus, sizeof(cpus), p + TASK_CPUS_PTR_OFF) &&
			    cpus && !bpf_probe_read_kernel(mask->w, sizeof(mask->w), cpus);
	if (cross) {
		if (have_mask) {
			count_seen(SEEN_CROSS_CHECKED);
			avoid = idle_allowed_on(node_of(orig), dest, mask);
		} else {
			count_seen(SEEN_CROSS_UNREADABLE);
		}
	}
	account(ctx, pid, orig, dest, p + TASK_COMM_OFF, avoid,
		have_mask && mask ? mask->w[0] : 0, (state & TASK_WAKING) != 0);
	return 0;
}
#else
TRACEPOINT_PROBE(sched, sched_migrate_task)
{
#if HAVE_MIGRATE_COMM
	const void *comm = args->comm;
#else
	const void *comm = NULL;
#endif

	account(args, args->pid, args->orig_cpu, args->dest_cpu, comm, -1, 0, 0);
	return 0;
}
#endif
