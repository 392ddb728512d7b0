"""launch: a containerized launcher for distributed PyTorch training on lab machines.

Kept free of imports: `python -m launcher.node.rankexec` runs in every rank and must start fast.
"""

__version__ = "0.1.0"
