"""What a run measured: step statistics, summary.json and its table, scaling across node counts."""
