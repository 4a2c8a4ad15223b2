"""The recipe's second process: lowering it to idle priority reaches every thread it has and the
threads it starts afterwards (EmoGen trains beside the expert on the cycles it leaves)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from emogen_jax.train import recipe

_CHILD = r"""
import sys, threading, time
stop = threading.Event()
def spin():
  while not stop.wait(0.01):
    pass
for _ in range(3):
  threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()                      # lowered by now: one more thread
t = threading.Thread(target=spin, daemon=True)
t.start()
time.sleep(0.1)
print(t.native_id, flush=True)
sys.stdin.readline()
"""


def _policy(tid: int) -> tuple[int, int]:
  return os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="Linux scheduling classes")
def test_lower_priority_reaches_every_thread_and_new_ones():
  proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "ready"
    tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
    assert len(tids) >= 4
    assert all(_policy(t)[0] == os.SCHED_OTHER for t in tids)
    assert recipe.lower_priority(proc.pid) == len(tids)
    idle = {t: _policy(t) for t in tids}
    assert all(p == os.SCHED_IDLE or nice == 19 for p, nice in idle.values()), idle
    proc.stdin.write("\n")
    proc.stdin.flush()
    new = int(proc.stdout.readline())
    assert new not in tids
    policy, nice = _policy(new)
    assert policy == os.SCHED_IDLE or nice == 19
    # This process (the parent, which trains EmoGen) keeps its priority.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    proc.stdin.write("\n")
    proc.stdin.flush()
  finally:
    proc.kill()
    proc.wait()
  # A process that is gone: nothing lowered, no error.
  assert recipe.lower_priority(proc.pid) == 0
