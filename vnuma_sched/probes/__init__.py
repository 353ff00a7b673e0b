"""eBPF probes: event model, classification, catalog (pure) and the bcc loader."""
