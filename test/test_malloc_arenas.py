"""The node limits glibc's malloc arenas in-process (``server.limit_malloc_arenas``)."""
import subprocess
import sys

import pytest

COUNT_ARENAS = r"""
import ctypes, ctypes.util, sys, tempfile, threading
limit = sys.argv[1] == 'limit'
if limit:
    from vla_prune_ros.node.server import limit_malloc_arenas
    assert limit_malloc_arenas(2)
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
def count():
    with tempfile.NamedTemporaryFile(suffix='.xml') as report:
        stream = libc.fopen(report.name.encode(), b'w')
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        return open(report.name).read().count('<heap nr=')
before = count()
started, release = threading.Barrier(9), threading.Event()
def allocate():                 # each new thread's first malloc picks (or makes) its arena
    libc.malloc(1 << 16)
    started.wait()
    release.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
started.wait()
print(before, count())
release.set()
"""


def arenas(mode: str) -> tuple[int, int]:
    """Arenas before and after 8 new threads each allocate once."""
    out = subprocess.run([sys.executable, '-c', COUNT_ARENAS, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    return before, after


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_limit_malloc_arenas_caps_the_arenas_new_threads_take():
    before, after = arenas('default')
    assert after >= before + 4            # glibc gives each new thread its own, up to 8 per core
    # Importing the node (torch, rclpy) has made a few already; the limit stops any more.
    before, after = arenas('limit')
    assert after == before
