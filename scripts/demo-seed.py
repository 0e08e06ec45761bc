#!/usr/bin/env python3
"""Fills an S3 bucket (moto, for the demo) with a small, realistic mix of
images, other files and a folder marker, and optionally writes a matching
ImportRequest (contract section 2) for `tetherctl submit`.

Run it with .services/venv/bin/python (boto3 comes with moto).
"""
import argparse
import json
import os
import random
import uuid

import boto3

PREFIXES = ["2024/06/", "2024/07/", "2024/08/"]
OTHERS = ["2024/06/notes.txt", "2024/07/manifest.json", "2024/08/README.txt"]
# Fixed: the platform generates one ExternalId per workspace, not per import.
EXTERNAL_ID = "7ed6d782-58b9-4b82-9f7e-a7d53c26e7f8"


def seed(s3, bucket, count):
    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    total = 0

    def put(key, body):
        nonlocal total
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/octet-stream")
        total += len(body)

    put(PREFIXES[0], b"")  # folder marker, as consoles create them
    for i in range(1, count + 1):
        ext = "png" if i % 10 == 0 else "jpg"
        magic = b"\x89PNG\r\n\x1a\n" if ext == "png" else b"\xff\xd8\xff\xe0"
        put(f"{PREFIXES[(i - 1) % 3]}img_{i:04d}.{ext}", magic + os.urandom(random.randint(1024, 4096)))
    for key in OTHERS:
        body = json.dumps({"note": key}).encode() if key.endswith(".json") else f"not an image: {key}\n".encode()
        put(key, body)
    print(f"seeded s3://{bucket}: {count} images, {len(OTHERS)} other objects and 1 folder marker "
          f"under {', '.join(PREFIXES)} ({total} bytes)")


def request(bucket, mode):
    return {
        "version": 1,
        "import_id": str(uuid.uuid4()),
        "workspace_id": "demo",
        "dataset_id": f"demo-{mode}",
        "mode": mode,
        "source": {
            "provider": "s3",
            "bucket": bucket,
            # Overlapping on purpose: Tether must import each object once.
            "prefixes": ["2024/06/", "2024/07/", "2024/"],
            "role_arn": "arn:aws:iam::123456789012:role/tether-demo",
            "external_id": EXTERNAL_ID,
        },
        "filter": {"extensions": ["jpg", "png"]},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9560"))
    p.add_argument("--bucket", default="tether-demo")
    p.add_argument("--count", type=int, default=60)
    p.add_argument("--mode", choices=["link", "copy"], default="link")
    p.add_argument("--request-out", metavar="FILE", help="write a sample ImportRequest here")
    p.add_argument("--no-upload", action="store_true", help="only write the request")
    args = p.parse_args()

    if not args.no_upload:
        s3 = boto3.client(
            "s3",
            endpoint_url=args.endpoint,
            region_name=os.environ.get("AWS_REGION", "us-east-1"),
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "tether-test-key"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "tether-test-secret"),
        )
        seed(s3, args.bucket, args.count)
    if args.request_out:
        req = request(args.bucket, args.mode)
        with open(args.request_out, "w") as f:
            json.dump(req, f, indent=2)
            f.write("\n")
        print(f"wrote {args.mode} ImportRequest {req['import_id']} to {args.request_out}")


if __name__ == "__main__":
    main()
