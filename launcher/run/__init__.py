"""Running a plan: the conductor, the executor that watches nodes, local nodes, the run directory."""
