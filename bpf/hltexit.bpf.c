/* SPDX-License-Identifier: GPL-2.0 */
/*
 * hltexit (host side): HLT exits per VM process and vCPU (VMX exit reason 12,
 * SVM 0x78), halt-polling success vs blocking (kvm_vcpu_wakeup: waited=0
 * means polling caught the wake-up), and PV kick hypercalls
 * (KVM_HC_KICK_CPU = 5). bcc dialect.
 */
#include "vnuma.h"

#define VMX_EXIT_HLT	12
#define SVM_EXIT_HLT	0x78
#define KVM_HC_KICK_CPU	5

struct vcpu_key {
	u32 pid;
	u32 vcpu;
};

BPF_HASH(hlt_exits, struct vcpu_key, u64, 4096);
BPF_PERCPU_ARRAY(wakeups, u64, 2);	/* 0: polled (no block), 1: blocked */
BPF_PERCPU_ARRAY(kicks, u64, 1);

TRACEPOINT_PROBE(kvm, kvm_exit)
{
	u32 reason = args->exit_reason;
	struct vcpu_key key = {};

	if (reason != VMX_EXIT_HLT && reason != SVM_EXIT_HLT)
		return 0;
	key.pid = bpf_get_current_pid_tgid() >> 32;
	key.vcpu = args->vcpu_id;
	hlt_exits.increment(key);
	return 0;
}

TRACEPOINT_PROBE(kvm, kvm_vcpu_wakeup)
{
	u32 k = args->waited ? 1 : 0;
	u64 *v = wakeups.lookup(&k);

	if (v)
		(*v)++;
	return 0;
}

TRACEPOINT_PROBE(kvm, kvm_hypercall)
{
	u32 zero = 0;
	u64 *v;

	if (args->nr != KVM_HC_KICK_CPU)
		return 0;
	v = kicks.lookup(&zero);
	if (v)
		(*v)++;
	return 0;
}
