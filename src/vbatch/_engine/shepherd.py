"""The process a vLLM server is started under, so that it cannot outlive vbatch.

usage: python shepherd.py PARENT_PID COMMAND...   (run as a file: it imports nothing of vbatch)

vbatch starts this in a new session (its own process group) with PR_SET_PDEATHSIG = SIGUSR1;
it runs COMMAND (vLLM's API server) as its child in the same group, and exits with its status.
Why not vLLM alone: when vbatch is killed outright (kill -9, the OOM killer) during start-up,
vLLM's API process ignores SIGTERM while it waits for its engine, and an engine whose API
process is killed alone lives on: either way a server nobody owns, holding its memory (on a
GPU, its share). Here:

- SIGUSR1 (vbatch died; or vbatch's ``stop()`` once its grace is over) ends the group, this
  process too (``end_group``).
- A guard, a forked child of this process told by the kernel when this one dies (SIGUSR1),
  ends the group should this process be killed outright: Ray SIGKILLs a dead actor's direct
  children, this process among them, and not theirs.
- SIGTERM (vbatch's ``stop()`` sends it to the group) is for vLLM: this process waits for the
  API server to finish its own shutdown; the guard then ends what is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

TRACKER_GRACE_S = 2.0  # a resource tracker is done well within this after its last client
TRACKER = "multiprocessing.resource_tracker"
PR_SET_PDEATHSIG = 1


def members(group: int) -> dict[int, str]:
    """The processes of process group ``group`` but this one: pid -> command line."""
    me, found = os.getpid(), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.getpgid(int(entry)) == group:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def kill_all_but_trackers(group: int) -> None:
    """SIGKILL every process of ``group`` but Python's resource trackers: once their clients
    are gone they unlink the shared memory vLLM's processes made (a CPU server's KV cache
    among it), which a SIGKILL to the whole group leaves behind in /dev/shm."""
    for pid, command in members(group).items():
        if TRACKER not in command:
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)


def end_group(*_: object) -> None:
    """SIGKILL the group, resource trackers last (``kill_all_but_trackers``), this process too."""
    group = os.getpgid(0)
    kill_all_but_trackers(group)
    deadline = time.monotonic() + TRACKER_GRACE_S
    while time.monotonic() < deadline and any(
        TRACKER in command for command in members(group).values()
    ):
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)


def tell_on_parent_death(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    signal.signal(signal.SIGUSR1, end_group)
    # A handler, not SIG_IGN: an ignored signal stays ignored across exec, in vLLM too.
    signal.signal(signal.SIGTERM, lambda *_: None)
    if os.getppid() != parent:  # vbatch died before the kernel could be told to say so
        end_group()
    me = os.getpid()
    if os.fork() == 0:  # the guard (it keeps the handlers above)
        tell_on_parent_death(signal.SIGUSR1)
        if os.getppid() != me:  # the shepherd died before the kernel was told
            end_group()
        while True:
            signal.pause()
    child = subprocess.Popen(command)
    code = child.wait()
    if code < 0:  # killed by a signal: end the same way, for vbatch to read the same status
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
