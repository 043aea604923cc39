"""The pieces of benchmarks/paper_table.py: task runner, worker tasks, parts, statistics and plots."""
