/* SPDX-License-Identifier: GPL-2.0 */
/*
 * halt: idle entries and residency per CPU and idle state (power:cpu_idle,
 * state 4294967295 = exit), a log2 histogram of residency in microseconds,
 * and PV-spinlock halts and kicks (kvm_wait / kvm_kick_cpu) where kprobes
 * exist. bcc dialect.
 */
#include "vnuma.h"

BPF_PERCPU_ARRAY(idle_enter_ts, u64, 1);
BPF_PERCPU_ARRAY(idle_cur_state, u32, 1);
BPF_PERCPU_ARRAY(idle_count, u64, MAX_IDLE_STATES);
BPF_PERCPU_ARRAY(idle_ns, u64, MAX_IDLE_STATES);
BPF_PERCPU_ARRAY(idle_hist, u64, HIST_SLOTS);
BPF_PERCPU_ARRAY(pvspin, u64, 2);	/* 0: kvm_wait halts, 1: kvm_kick_cpu kicks */

TRACEPOINT_PROBE(power, cpu_idle)
{
	u32 zero = 0, state = args->state;
	u64 now = bpf_ktime_get_ns();
	u64 *ts = idle_enter_ts.lookup(&zero);
	u32 *cur = idle_cur_state.lookup(&zero);

	if (!ts || !cur)
		return 0;
	if (state != (u32)-1) {
		if (state >= MAX_IDLE_STATES)
			state = MAX_IDLE_STATES - 1;
		*ts = now;
		*cur = state;
		return 0;
	}
	if (*ts) {
		u64 delta = now - *ts;
		u32 s = *cur;
		u64 *c = idle_count.lookup(&s);
		u64 *ns = idle_ns.lookup(&s);
		u32 slot = bpf_log2l(delta / 1000);	/* 0: <1 us; k: [2^(k-1), 2^k) us */
		u64 *h;

		if (slot >= HIST_SLOTS)
			slot = HIST_SLOTS - 1;
		h = idle_hist.lookup(&slot);
		if (c)
			(*c)++;
		if (ns)
			*ns += delta;
		if (h)
			(*h)++;
		*ts = 0;
	}
	return 0;
}

#if HAVE_KPROBES
int kprobe__kvm_wait(struct pt_regs *ctx)
{
	u32 k = 0;
	u64 *v = pvspin.lookup(&k);

	if (v)
		(*v)++;
	return 0;
}

int kprobe__kvm_kick_cpu(struct pt_regs *ctx)
{
	u32 k = 1;
	u64 *v = pvspin.lookup(&k);

	if (v)
		(*v)++;
	return 0;
}
#endif
