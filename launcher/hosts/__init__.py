"""Lab hosts: SSH connections, nodes started and stopped on them, the steps before a run, preflight."""
