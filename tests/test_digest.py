"""The worker digests the model right before it loads and measures it, so the digest must not
change the allocator state the timed loop runs in (docs/methodology.md, "Harness overhead")."""

import ctypes
import ctypes.util
import hashlib
import platform
import subprocess
import sys

import pytest

from workers.contract import digest
from workers.contract.digest import sha256_file

GLIBC_DEFAULT_MMAP_THRESHOLD = 128 << 10


@pytest.mark.parametrize("size", [0, 1, digest._CHUNK - 1, digest._CHUNK, 3 * digest._CHUNK + 7])
def test_file_digest_is_sha256_across_chunk_edges(tmp_path, size):
    data = bytes(range(256)) * (size // 256 + 1)
    path = tmp_path / "f.bin"
    path.write_bytes(data[:size])
    assert sha256_file(path) == hashlib.sha256(data[:size]).hexdigest()


def test_file_digest_buffer_stays_below_the_mmap_threshold():
    """A freed mmapped buffer raises glibc's dynamic mmap and trim thresholds for the rest of the
    process; a heap-sized one leaves them where a user's own process has them."""
    assert digest._CHUNK < GLIBC_DEFAULT_MMAP_THRESHOLD


@pytest.mark.skipif(platform.system() != "Linux" or not ctypes.util.find_library("c"), reason="glibc only")
def test_digesting_a_large_file_leaves_the_heap_trim_threshold_alone(tmp_path):
    """Observed, not assumed: after the digest of a 16 MiB file, freeing 4 MiB at the top of the
    heap still gives the pages back (mallinfo2's `keepcost` stays small), as in a fresh process."""
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * (16 << 20))
    probe = f"""
import ctypes, sys
sys.path.insert(0, {str(digest.__file__.rsplit('/workers/', 1)[0])!r})
from workers.contract.digest import sha256_file
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    print("skip"); raise SystemExit
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = M
if sys.argv[1] == "digest":
    sha256_file({str(path)!r})
libc.malloc.restype = ctypes.c_void_p
blocks = [libc.malloc(64 << 10) for _ in range(64)]
for b in reversed(blocks):
    libc.free(ctypes.c_void_p(b))
print(libc.mallinfo2().keepcost)
"""
    out = {}
    for mode in ("fresh", "digest"):
        p = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True)
        out[mode] = p.stdout.strip()
    if "skip" in out.values():
        pytest.skip("this glibc has no mallinfo2")
    assert int(out["digest"]) < (1 << 20), out
    assert int(out["fresh"]) < (1 << 20), out
