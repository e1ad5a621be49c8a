"""Runs on the operator's machine, as root, in its own process: every exec on this machine and in the lab
containers (they share its kernel), with its command line read the moment exec() returns.

    python exec_tracer.py OUTPUT READY

Listens to the kernel's process events (netlink proc connector) and appends one line per exec to OUTPUT
(arguments joined by spaces); touches READY once listening; on SIGTERM writes "# execs=N overflows=N"
and exits. A process of its own, so that nothing in the test process delays the read.
"""

import errno
import os
import signal
import socket
import struct
import sys

NETLINK_CONNECTOR, CN_IDX_PROC, CN_VAL_PROC, PROC_EVENT_EXEC = 11, 1, 1, 0x2
SO_RCVBUFFORCE = 33

output, ready = sys.argv[1], sys.argv[2]
# Real-time priority: a process of ~10 ms must be read before it exits even while builds and other labs load
# every core (nice alone does not promise it). It sleeps in recv() between events, so it starves nothing.
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
except OSError:
    pass  # where real-time is not allowed, the nice level it was started with stands
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)  # room for bursts of execs
sock.bind((0, CN_IDX_PROC))
listen = struct.pack("=I", 1)  # PROC_CN_MCAST_LISTEN
cn_msg = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(listen), 0) + listen
sock.send(struct.pack("=IHHII", 16 + len(cn_msg), 3, 0, 0, 0) + cn_msg)
execs = overflows = 0
stopping = False


def stop(*_):
    global stopping
    stopping = True
    sock.shutdown(socket.SHUT_RDWR)


signal.signal(signal.SIGTERM, stop)
with open(output, "w", buffering=1 << 16) as out:
    open(ready, "w").close()
    while not stopping:
        try:
            data = sock.recv(65536)
        except OSError as error:
            if error.errno == errno.ENOBUFS:
                overflows += 1
                continue
            break
        if not data:
            break
        # nlmsghdr (16) + cn_msg (20) + proc_event: what (4), cpu (4), timestamp (8), then pid (4).
        if len(data) >= 56 and struct.unpack_from("=I", data, 36)[0] == PROC_EVENT_EXEC:
            execs += 1
            pid = struct.unpack_from("=I", data, 52)[0]
            try:
                fd = os.open(f"/proc/{pid}/cmdline", os.O_RDONLY)
                try:
                    line = os.read(fd, 1 << 20)
                finally:
                    os.close(fd)
            except OSError:
                continue
            out.write(line.replace(b"\0", b" ").replace(b"\n", b" ").decode(errors="replace") + "\n")
    out.write(f"# execs={execs} overflows={overflows}\n")
