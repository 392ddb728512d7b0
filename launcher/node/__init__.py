"""What runs on every node beside the ranks, and exactly what ships into job images and onto hosts:
the launcher<->rank contract, the rank wrapper, the node supervisor, the metrics writer, and the
startup hook that measures optimizer steps for jobs that write no metrics (`startup/`, `stepmetrics`).

Standard library only, and free of imports here: `python -m launcher.node.rankexec` starts once per
rank and must start fast.
"""
