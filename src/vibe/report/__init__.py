"""Reports: the demo, comparison tables and plots (matplotlib Agg)."""
