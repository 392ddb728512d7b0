"""The job image: built here with the Docker SDK (build), and sent to the hosts that lack it (ship)."""
