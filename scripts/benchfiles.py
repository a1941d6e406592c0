#!/usr/bin/env python3
"""File workloads of scripts/bench.sh, each run by one Python process (as a user's script would).

  benchfiles.py create DIR N SIZE [--fsync]   create DIR/f000000.. with N x SIZE fresh random
                                              bytes; --fsync: fsync each file and DIR after it
                                              (the local reference for a durable close)
  benchfiles.py read DIR N                    read DIR/f000000.. one after the other
  benchfiles.py mktar OUT N SEED              write a tarball of N small files in folders of
                                              at most 100, sizes 0.5-32 KiB, all from SEED

create and read print one line `start=UNIX end=UNIX secs=S files/s=R bytes=B`; the clock starts
after the data is generated. mktar is deterministic: the same SEED gives the same tarball (a
different SEED gives different contents, since Garage deduplicates identical blocks).
"""

import io
import os
import random
import tarfile
import time


def name(i):
    return f"f{i:06d}"


def report(start, end, n, nbytes):
    secs = end - start
    print(f"start={start:.6f} end={end:.6f} secs={secs:.3f} files/s={n / secs:.1f} bytes={nbytes}")


def create(directory, n, size, fsync):
    data = os.urandom(n * size)
    os.makedirs(directory, exist_ok=True)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY) if fsync else None
    start = time.time()
    for i in range(n):
        with open(os.path.join(directory, name(i)), "wb") as f:
            f.write(data[i * size : (i + 1) * size])
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if fsync:
            os.fsync(dfd)
    end = time.time()
    if dfd is not None:
        os.close(dfd)
    report(start, end, n, n * size)


def read(directory, n):
    start = time.time()
    total = 0
    for i in range(n):
        with open(os.path.join(directory, name(i)), "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
    report(start, time.time(), n, total)


def mktar(out, n, seed):
    rng = random.Random(seed)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            d = f"src/mod{i // 100:03d}"
            if i % 100 == 0:
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                info.mtime = 1_700_000_000
                tar.addfile(info)
            size = rng.choice((512, 1024, 2048, 4096, 8192, 16384, 32768)) + rng.randrange(512)
            info = tarfile.TarInfo(f"{d}/file{i:05d}.c")
            info.size = size
            info.mode = 0o644
            info.mtime = 1_700_000_000 + i
            tar.addfile(info, io.BytesIO(rng.randbytes(size)))


def main():
    import argparse

    p = argparse.ArgumentParser(description="File workloads of scripts/bench.sh")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("dir")
    c.add_argument("n", type=int)
    c.add_argument("size", type=int)
    c.add_argument("--fsync", action="store_true")
    r = sub.add_parser("read")
    r.add_argument("dir")
    r.add_argument("n", type=int)
    t = sub.add_parser("mktar")
    t.add_argument("out")
    t.add_argument("n", type=int)
    t.add_argument("seed", type=int)
    a = p.parse_args()
    if a.cmd == "create":
        create(a.dir, a.n, a.size, a.fsync)
    elif a.cmd == "read":
        read(a.dir, a.n)
    else:
        mktar(a.out, a.n, a.seed)


if __name__ == "__main__":
    main()
