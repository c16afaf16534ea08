"""Test-only pause points: where a fault test kills a process mid-work.

Off unless the named environment variable is set (never in a deployment): ``"<point>:<marker
file>"`` makes the first process reaching ``point`` create the marker (holding its pid) and
sleep, so that a test can SIGKILL it exactly there. Only the first: the redelivered or requeued
work finds the marker and goes through.
"""

from __future__ import annotations

import os
import time


def pause_point(env_var: str, point: str) -> None:
    spec = os.environ.get(env_var)
    if not spec:
        return
    at, _, marker = spec.partition(":")
    if at != point:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # once
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    time.sleep(3600)
