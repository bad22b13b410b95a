"""Compute threads follow the idle cores: a busy machine gets fewer, so no thread of ours waits for a
core that another process holds (benchmarks/contention.py measures what that saves)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from blipsearch.system import available_cores

PROBE = (
    "import json, os, subprocess, sys, threading, time\n"
    "import numpy as np\n"
    "import torch\n"
    "from blipsearch import system\n"
    "out = {'ceiling': torch.get_num_threads(), 'long': system.compute_threads(long_operations=True)}\n"
    "busy = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(2)]\n"
    "time.sleep(0.5)\n"
    "out['others'] = max(system.others_running() for _ in range(20))\n"
    "out['busy'] = min(system.compute_threads() for _ in range(20))\n"
    "out['busy_long'] = system.compute_threads(long_operations=True)\n"
    "for p in busy: p.kill(); p.wait()\n"
    "stop = False\n"
    "def spin():\n"
    "    a = np.ones((400, 400), np.float32)\n"
    "    while not stop: a @ a\n"
    "ours = [threading.Thread(target=spin) for _ in range(2)]\n"
    "for t in ours: t.start()\n"
    "time.sleep(0.3)\n"
    "out['own_threads_counted'] = min(system.others_running() for _ in range(20))\n"
    "stop = True\n"
    "for t in ours: t.join()\n"
    "os.environ['BLIPSEARCH_THREADS'] = '3'\n"
    "out['fixed'] = system.compute_threads()\n"
    "torch.set_num_threads(2)\n"
    "system.use_compute_threads()\n"
    "out['set'] = torch.get_num_threads()\n"
    "print(json.dumps(out))\n"
)


@pytest.mark.skipif(available_cores() < 2 or not sys.platform.startswith("linux"),
                    reason="needs two cores and Linux's /proc/loadavg")
@pytest.mark.alone  # another test process on the machine would count as busy cores
def test_threads_follow_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # torch's default: a thread per core
    monkeypatch.delenv("BLIPSEARCH_THREADS", raising=False)
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    out = json.loads(done.stdout)
    cores = min(available_cores(), out["ceiling"])
    assert out["long"] == cores  # the vision encoder's long operations take every core
    assert out["others"] >= 1.5  # two busy processes
    assert out["busy"] < cores and out["busy_long"] == cores
    # Our own busy threads are not other processes (this holds on a quiet machine; CI's
    # neighbours may add some, never two whole cores of them for 20 readings in a row).
    assert out["own_threads_counted"] < 1.5
    assert out["fixed"] == 3 and out["set"] == 3  # BLIPSEARCH_THREADS wins, and is applied
