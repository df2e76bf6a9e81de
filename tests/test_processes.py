"""The child-process helpers: a coordinator port taken by someone else is retried, never waited on; no orphans."""

import socket
import sys
import time

import processes

_COORDINATED = """
import sys, jax
jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[1]), initialization_timeout=60)
print("processes", jax.process_count(), flush=True)
"""


def test_a_taken_coordinator_port_is_retried_on_a_fresh_one(monkeypatch):
    taken = socket.socket(socket.AF_INET6)
    taken.bind(("", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    ports = iter([taken_port])
    fresh = processes.free_port
    monkeypatch.setattr(processes, "free_port", lambda: next(ports, None) or fresh())
    env = processes.cpu_env(1)
    addresses = []

    def launch(address):
        addresses.append(address)
        return [processes.Child([sys.executable, "-c", _COORDINATED, str(i), address], env=env) for i in range(2)]

    started = time.monotonic()
    results = processes.run_processes(launch, timeout=120)
    taken.close()
    assert addresses[0] == f"localhost:{taken_port}" and len(addresses) == 2, [out[-500:] for _, out in results]
    assert [code for code, _ in results] == [0, 0], [out[-1000:] for _, out in results]
    assert all("processes 2" in out for _, out in results)
    assert time.monotonic() - started < 60  # The failed attempt ended at once, not after the 60 s init timeout.


def test_a_child_that_overruns_is_killed_and_reported():
    code, out = processes.run_one([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                  timeout=2)
    assert code < 0 and "started" in out and "killed after 2 s" in out
