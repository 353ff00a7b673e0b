# vnuma_sched: set-up, the main job, and the tests.
#   make install   Debian packages + .venv (idempotent; apt needs root)
#   make demo      the main job on this machine
#   make test      every test tier (unit, build, kernel, root, bpf, vm)

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := python3-bpfcc python3-venv qemu-system-x86 linux-source-6.1 \
	linux-source-6.12 build-essential flex bison bc libelf-dev libssl-dev dwarves \
	cpio kmod xz-utils git linux-headers-amd64
STAMP := $(VENV)/.installed

.PHONY: install demo test clean-venv packages headers

install: packages $(STAMP) headers

packages:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make install: needs root to apt-get install:" $$missing; exit 4; fi; \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends $$missing; \
	fi

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@$(PY) -c 'import bcc' || { echo "bcc not importable from $(VENV): is python3-bpfcc installed?"; exit 5; }
	@touch $@

# bcc compiles against the running kernel's headers. Kernels without a headers
# package get Debian's newest linux-headers-*-amd64 tree (tracepoint programs
# only need the common layout). Only created when absent, never overwritten.
headers:
	@rel=$$(uname -r); mod=/lib/modules/$$rel; \
	if [ ! -e $$mod/build ] && [ "$$(id -u)" = 0 ]; then \
		hdr=$$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1); \
		common=$${hdr%-amd64}-common; \
		if [ -n "$$hdr" ]; then mkdir -p $$mod && ln -sfn $$hdr $$mod/build && \
			ln -sfn $$common $$mod/source && echo "linked $$mod/build -> $$hdr"; fi; \
	fi

VNUMA := PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/vnuma-sched
CACHE ?= $(or $(VNUMA_SCHED_CACHE),/var/cache/vnuma_sched)
# 8 OpenMP threads on 4 vCPUs: measured, 6 threads showed about 3 cross-node
# migrations per run (nothing to damp), 8 threads about 100; see the README.
AB := ab --kernel $(CACHE)/builds/series-6.12 --topology 2x2 --workload omp-barrier \
	--threads 8 --spincount 0 --iterations 3000 --runs 5

demo: install
	@echo "== 1/6 doctor: what this machine exposes"
	$(VNUMA) doctor
	@echo "== 2/6 topology"
	$(VNUMA) topology
	@echo "== 3/6 fetch Debian's 6.12, apply the series, build, boot a 2x2 guest"
	time $(VNUMA) pipeline --version 6.12 --topology 2x2
	@echo "== 4/6 experiment 2: NUMA idle damping off (A) vs on (B)"
	time $(VNUMA) $(AB) --a kernel.sched_numa_idle_damp=0 --b kernel.sched_numa_idle_damp=3 \
		--out demo-out/damping
	@echo "== 5/6 experiment 1: emulated old host, idle-halt hint off (A) vs on (B)"
	time $(VNUMA) $(AB) --append vnuma_debug.emulate_halt_preempted=1 \
		--a kvm_guest.idle_halt_hint=off --b kvm_guest.idle_halt_hint=on --out demo-out/halt
	@echo "== 6/6 comparisons"
	$(VNUMA) compare demo-out/damping --plot demo-out/damping/compare.png
	$(VNUMA) compare demo-out/halt --plot demo-out/halt/compare.png

test: install
	@PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc = 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)
