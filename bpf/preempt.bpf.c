/* SPDX-License-Identifier: GPL-2.0 */
/*
 * preempt: idle CPUs that available_idle_cpu() rejected because
 * vcpu_is_preempted() said so - the direct evidence of the halted-vCPU
 * problem. available_idle_cpu() calls vcpu_is_preempted() only after
 * idle_cpu() was true, so a "preempted" answer inside it is exactly an idle
 * CPU rejected. Needs kprobes. bcc dialect. The loader attaches on_aic_* to
 * available_idle_cpu() and on_preempted_return to the kernel's
 * vcpu_is_preempted implementation (PREEMPTED_FN_KRETPROBE=1 when one exists).
 */
#include "vnuma.h"

BPF_PERCPU_ARRAY(in_aic, s32, 1);		/* the CPU being asked about, or -1 */
BPF_PERCPU_ARRAY(checked, u64, MAX_CPUS);	/* idle CPUs asked about, by target */
BPF_PERCPU_ARRAY(rejected, u64, MAX_CPUS);	/* ... and rejected as preempted */

int on_aic_enter(struct pt_regs *ctx)
{
	u32 zero = 0;
	s32 c = (s32)PT_REGS_PARM1(ctx);

	in_aic.update(&zero, &c);
	return 0;
}

int on_aic_return(struct pt_regs *ctx)
{
	u32 zero = 0;
	s32 none = -1;

	in_aic.update(&zero, &none);
	return 0;
}

#if PREEMPTED_FN_KRETPROBE
int on_preempted_return(struct pt_regs *ctx)
{
	u32 zero = 0;
	s32 *c = in_aic.lookup(&zero);
	u32 target;
	u64 *v;

	if (!c || *c < 0 || *c >= MAX_CPUS)
		return 0;
	target = *c;
	v = checked.lookup(&target);
	if (v)
		(*v)++;
	if (PT_REGS_RC(ctx) & 0xff) {
		v = rejected.lookup(&target);
		if (v)
			(*v)++;
	}
	return 0;
}
#endif
