"""The system seen through a SysRoot: topology, CPUID, kernel facts, doctor."""
