"""Where a run's nodes run: the interface the conductor and every view of a run use (`base`), and
its backends: this machine (`local`) and lab hosts over SSH (`ssh`, prepared by `deploy`)."""
