#!/usr/bin/env python3
"""Kills transplant with SIGKILL at many points of a live update and checks, each time, that the
old process is untraced and serves the same data, and that every process transplant spawned is
gone. The point of each kill is the k-th line transplant logs at debug level (k drawn from the
seed), not a delay, so a seed names a point of the update.

    scripts/kill-experiment.py [SEEDS] [FIRST_SEED]      (default 100 seeds from 0)

Builds the release binary and the fixtures, uses the upd_hash pair, and prints one line per
seed and a summary; exit status 1 if any invariant failed.
"""
import ctypes
import glob
import os
import signal
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PR_SET_CHILD_SUBREAPER = 36


def mix(seed):
    m = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.f = self.s.makefile("rw")

    def ask(self, line):
        self.f.write(line + "\n")
        self.f.flush()
        return self.f.readline().rstrip("\n")

    def dump(self):
        self.f.write("DUMP\n")
        self.f.flush()
        out = []
        while True:
            l = self.f.readline().rstrip("\n")
            if l == "END":
                return out
            out.append(l)


def children(pid):
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            rest = open(stat).read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[1]) == pid:
            out.append(int(stat.split("/")[2]))
    return out


def tracer_of(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return None


def main():
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "transplant", "-p", "fixtures"],
                   cwd=ROOT, check=True)
    outs = glob.glob(f"{ROOT}/target/release/build/fixtures-*/out/upd_hash_v1")
    fixtures = os.path.dirname(outs[0])
    transplant = f"{ROOT}/target/release/transplant"
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    me = os.getpid()

    old = subprocess.Popen([f"{fixtures}/upd_hash_v1", "0"], stdout=subprocess.PIPE, text=True)
    ready = old.stdout.readline()
    port = int(ready.split("port=")[1].split()[0])
    c = Client(port)
    for i in range(60):
        v = f"text{i}" if i % 3 == 0 else str(i * 1000 - 7000)
        assert c.ask(f"SET key{i:02} {v}") == "OK"
    dump, total = c.dump(), c.ask("SUM")

    failures, committed = 0, 0
    for seed in range(first, first + seeds):
        k = 1 + mix(seed) % 18
        p = subprocess.Popen([transplant, "-vv", "--pid", str(old.pid), "--to", f"{fixtures}/upd_hash_v2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, RUST_LOG="debug"))
        last = ""
        for _ in range(k):
            line = p.stderr.readline()
            if not line:
                break
            last = line
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stderr.close()
        leftovers = []
        for pid in children(me):
            if pid == old.pid:
                continue
            _, status = os.waitpid(pid, 0)
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                leftovers.append((pid, status))
        alive = old.poll() is None and not open(f"/proc/{old.pid}/stat").read().rsplit(") ", 1)[1].startswith("Z")
        if not alive:
            committed += 1
            print(f"seed {seed}: killed at line {k}: the update had committed; stopping")
            break
        ok = (tracer_of(old.pid) == 0 and not leftovers and c.ask("VERSION") == "v1"
              and c.dump() == dump and c.ask("SUM") == total)
        failures += not ok
        # "2026-...Z DEBUG target: message": the target and the message.
        where = " ".join(last.split()[2:])[:90] if last else "(no line)"
        print(f"seed {seed}: killed at line {k} ({where}): {'ok' if ok else 'FAILED'}"
              f"{'' if not leftovers else f', leftovers {leftovers}'}")
    old.kill()
    old.wait()
    print(f"\n{seeds} seeds: {failures} failed, {committed} committed before the kill")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
