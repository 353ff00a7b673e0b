"""A/B experiments: arms, the guest agent, statistics, comparison, workloads."""
