"""Command line: click commands, one module per command group."""
