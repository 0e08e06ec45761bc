#!/usr/bin/env python3
"""A moto server for `make bench`, seeded in memory.

Seeding 200,000 objects through moto's HTTP API takes ~17 minutes (~200
PUT/s); writing them straight into the in-process S3 backend takes seconds.
The server then answers on HTTP like `moto_server` (S3 and STS).

usage: bench-moto.py PORT BUCKET [NAME=PREFIX:COUNT[:BYTES] ...]
  wide=wide/:100x1000   100 sub-prefixes (wide/p000/ .. wide/p099/) of 1,000 objects
  flat=flat/:100000     100,000 objects under one prefix
  big=large/:1:1073741824  one object of that many bytes
Prints one JSON line with the seeding time once it serves, then serves until
stdin closes (the benchmark ends) or it is killed.
"""
import json
import logging
import sys
import time

from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer


def keys(prefix, spec):
    """The keys of one tree: COUNT objects, or WIDTHxCOUNT in sub-prefixes."""
    if "x" in spec:
        width, count = (int(n) for n in spec.split("x"))
        for p in range(width):
            for i in range(count):
                yield f"{prefix}p{p:03d}/img_{i:05d}.jpg"
    else:
        for i in range(int(spec)):
            yield f"{prefix}img_{i:06d}.jpg"


def main():
    port, bucket, trees = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    # One access-log line per request would drown the benchmark's output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    started = time.monotonic()
    backend.create_bucket(bucket, "us-east-1")
    seeded = {}
    for tree in trees:
        name, rest = tree.split("=", 1)
        prefix, spec = rest.split(":", 1)
        spec, _, size = spec.partition(":")
        n = 0
        if size:
            # A large body: a repeating pattern, so the copy can be checked.
            pattern = bytes(i * 13 % 241 for i in range(241))
            total = int(size)
            body = (pattern * (total // len(pattern) + 1))[:total]
        for key in keys(prefix, spec):
            backend.put_object(bucket, key, body if size else key.encode())
            n += 1
        seeded[name] = n
    print(json.dumps({"port": port, "bucket": bucket, "objects": seeded,
                      "seconds": round(time.monotonic() - started, 1)}), flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
