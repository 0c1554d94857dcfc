"""OpenMP worker threads: only compute threads hold them, and two compute threads split the cores.

Each case runs in a fresh interpreter, since the pytest process's own threads already hold OpenMP teams.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs torch with 2 or more intra-op threads")

PRELUDE = """
import os, threading, torch
from mint.runtime import compute_threads, release_workers, serial_thread

def os_threads():
    return len(os.listdir("/proc/self/task"))

def parallel_work():
    x = torch.randn(512, 512)
    for _ in range(3):
        (x @ x).softmax(-1).sum()

def in_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]
"""


def run(body: str) -> str:
    result = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_thread_starts_openmp_workers_unless_it_runs_serially():
    out = run("""
        def plain():
            before = os_threads(); parallel_work(); return os_threads() - before

        def serial():
            serial_thread(); before = os_threads(); parallel_work(); return os_threads() - before

        serial_started = in_thread(serial)  # first: a finished thread's workers exit only after it does
        print(in_thread(plain), serial_started)
    """)
    plain, serial = map(int, out.split())
    assert plain >= 1  # the control: parallel ops on a plain thread start workers
    assert serial == 0


def test_release_workers_frees_the_callers_team():
    out = run("""
        parallel_work()
        with_team = os_threads()
        release_workers()
        released = os_threads()
        parallel_work()
        print(with_team, released, os_threads())
    """)
    with_team, released, again = map(int, out.split())
    assert released < with_team
    assert again == with_team  # the next parallel op starts a team again


def test_a_compute_thread_that_starts_while_another_works_gets_half_the_threads():
    out = run("""
        a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
        shares = {}

        def a():
            with compute_threads.working():
                a_in.set()
                b_in.wait()
            with compute_threads.working():  # its next step, while b still works
                shares["a"] = torch.get_num_threads()
            a_done.set()

        def b():
            a_in.wait()
            with compute_threads.working():
                shares["b"] = torch.get_num_threads()
                b_in.set()
                a_done.wait()
            with compute_threads.working():  # alone again
                shares["b_alone"] = torch.get_num_threads()

        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(torch.get_num_threads(), shares["a"], shares["b"], shares["b_alone"])
    """)
    full, a, b, b_alone = map(int, out.split())
    assert a == b == full // 2
    assert b_alone == full


def test_a_long_pass_widens_between_layers_once_the_other_compute_thread_stops():
    out = run("""
        other_in, other_out = threading.Event(), threading.Event()

        def other():
            with compute_threads.working():
                other_in.set()
                other_out.wait()

        thread = threading.Thread(target=other)
        thread.start()
        other_in.wait()
        with compute_threads.working():
            narrow = torch.get_num_threads()
            other_out.set()
            thread.join()
            compute_threads.rebalance()  # what the trainer's layer hooks call
            wide = torch.get_num_threads()
        print(torch.get_num_threads(), narrow, wide)
    """)
    full, narrow, wide = map(int, out.split())
    assert narrow == full // 2
    assert wide == full
