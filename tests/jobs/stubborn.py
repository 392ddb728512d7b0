"""A rank that ignores SIGTERM (as some training scripts' handlers do): only SIGKILL ends it."""

import os
import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"stubborn rank {os.environ.get('RANK')} pid {os.getpid()}", flush=True)
while True:
    time.sleep(0.5)
