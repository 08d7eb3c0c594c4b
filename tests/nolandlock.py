"""`python nolandlock.py PROGRAM ARGS...`: run PROGRAM on a kernel that seems to have no Landlock.

A seccomp filter, inherited by every process PROGRAM starts, answers the three Landlock system calls
with ENOSYS, as a kernel built without Landlock (or older than 5.13) does; everything else runs as it
would. The tests use it to drive the harness's fallback path on this machine's kernel.
"""

import ctypes
import os
import struct
import sys

LANDLOCK_FIRST, LANDLOCK_LAST = 444, 446  # landlock_create_ruleset .. landlock_restrict_self
ENOSYS = 38
PROGRAM = [  # classic BPF: (code, jump if true, jump if false, constant)
    (0x20, 0, 0, 0),  # load the system call number
    (0x35, 0, 2, LANDLOCK_FIRST),  # >= 444: go on, else allow
    (0x25, 1, 0, LANDLOCK_LAST),  # > 446: allow, else fail
    (0x06, 0, 0, 0x00050000 | ENOSYS),  # SECCOMP_RET_ERRNO | ENOSYS
    (0x06, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
]


def without_landlock():
    libc = ctypes.CDLL(None, use_errno=True)
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in PROGRAM))
    program = struct.pack("HxxxxxxQ", len(PROGRAM), ctypes.addressof(code))
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, which a filter needs
        raise OSError(ctypes.get_errno(), "no_new_privs")
    if libc.prctl(22, 2, ctypes.c_char_p(program), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "seccomp")


if __name__ == "__main__":
    without_landlock()
    os.execv(sys.argv[1], sys.argv[1:])
