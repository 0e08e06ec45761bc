#!/usr/bin/env python3
"""Fills a demo bucket (S3 on moto, GCS on fake-gcs-server or an Azure
container on Azurite) with a small, realistic mix of images, other files and
a folder marker, and optionally writes a matching ImportRequest (contract
section 2) for `tetherctl submit`.

Run it with .services/venv/bin/python (boto3 comes with moto; GCS and Azure
need only the standard library).
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import random
import urllib.error
import urllib.parse
import urllib.request
import uuid

PREFIXES = ["2024/06/", "2024/07/", "2024/08/"]
OTHERS = ["2024/06/notes.txt", "2024/07/manifest.json", "2024/08/README.txt"]
# Fixed: the platform generates one ExternalId per workspace, not per import.
EXTERNAL_ID = "7ed6d782-58b9-4b82-9f7e-a7d53c26e7f8"
# The service account the platform created for the workspace (GCS's ExternalId).
GCS_SERVICE_ACCOUNT = "importer@demo-project.iam.gserviceaccount.com"
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_SAS_VERSION = "2022-11-02"


def objects(count):
    """(key, body) pairs: images under the three prefixes, then other files."""
    for i in range(1, count + 1):
        ext = "png" if i % 10 == 0 else "jpg"
        magic = b"\x89PNG\r\n\x1a\n" if ext == "png" else b"\xff\xd8\xff\xe0"
        yield f"{PREFIXES[(i - 1) % 3]}img_{i:04d}.{ext}", magic + os.urandom(random.randint(1024, 4096))
    for key in OTHERS:
        yield key, json.dumps({"note": key}).encode() if key.endswith(".json") else f"not an image: {key}\n".encode()


def seed(put, url, count, marker=True):
    """Uploads the mix with put(key, body); a folder marker only where the
    provider has them (Azure blob names cannot end in '/')."""
    total = 0
    if marker:
        put(PREFIXES[0], b"")  # folder marker, as consoles create them
    for key, body in objects(count):
        put(key, body)
        total += len(body)
    print(f"seeded {url}: {count} images, {len(OTHERS)} other objects"
          f"{' and 1 folder marker' if marker else ''} under {', '.join(PREFIXES)} ({total} bytes)")


def http(method, url, body=b"", headers=None, ok_conflict=False):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        if ok_conflict and e.code == 409:  # the bucket/container exists already
            return b""
        shown = url.split("?")[0]  # the query may hold a SAS
        raise SystemExit(f"demo-seed: {method} {shown} -> {e.code}: {e.read()[:300].decode(errors='replace')}")


# --- S3 (moto) --------------------------------------------------------------

def seed_s3(endpoint, bucket, count):
    import boto3  # only in the venv, and only needed here

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "tether-test-key"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "tether-test-secret"),
    )
    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass

    def put(key, body):
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/octet-stream")

    seed(put, f"s3://{bucket}", count)


# --- GCS (fake-gcs-server: JSON API, no auth) -------------------------------

def seed_gcs(endpoint, bucket, count):
    endpoint = endpoint.rstrip("/")
    http("POST", f"{endpoint}/storage/v1/b", json.dumps({"name": bucket}).encode(),
         {"Content-Type": "application/json"}, ok_conflict=True)

    def put(key, body):
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        http("POST", f"{endpoint}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}", body,
             {"Content-Type": "application/octet-stream"})

    seed(put, f"gs://{bucket}", count)


# --- Azure Blob (Azurite), with account SAS tokens --------------------------

def account_sas(account, key, permissions, valid_for):
    """An account SAS for the Blob service (ss=b, srt=sco), version 2022-11-02."""
    expiry = (datetime.datetime.now(datetime.timezone.utc) + valid_for).strftime("%Y-%m-%dT%H:%M:%SZ")
    # account, sp, ss, srt, st, se, sip, spr, sv, ses
    to_sign = "\n".join([account, permissions, "b", "sco", "", expiry, "", "", AZURE_SAS_VERSION, ""]) + "\n"
    sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
    return urllib.parse.urlencode(
        {"sv": AZURE_SAS_VERSION, "ss": "b", "srt": "sco", "sp": permissions, "se": expiry, "sig": sig})


def seed_azure(endpoint, account, key, container, count):
    base = f"{endpoint.rstrip('/')}/{urllib.parse.quote(container, safe='')}"
    sas = account_sas(account, key, "racwdl", datetime.timedelta(hours=1))  # the seeder's own, short-lived
    http("PUT", f"{base}?restype=container&{sas}", ok_conflict=True)

    def put(key, body):
        http("PUT", f"{base}/{urllib.parse.quote(key, safe='/')}?{sas}", body,
             {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"})

    seed(put, f"azure://{account}/{container}", count, marker=False)


# --- ImportRequest ----------------------------------------------------------

def request(args):
    # Overlapping on purpose: Tether must import each object once.
    prefixes = ["2024/06/", "2024/07/", "2024/"]
    if args.provider == "s3":
        source = {"provider": "s3", "bucket": args.bucket, "prefixes": prefixes,
                  "role_arn": "arn:aws:iam::123456789012:role/tether-demo", "external_id": EXTERNAL_ID}
    elif args.provider == "gcs":
        source = {"provider": "gcs", "bucket": args.bucket, "prefixes": prefixes,
                  "impersonate_service_account": GCS_SERVICE_ACCOUNT}
    else:
        # What a customer grants: read and list, for a few hours.
        sas = account_sas(args.account, args.account_key, "rl", datetime.timedelta(hours=6))
        source = {"provider": "azure", "account": args.account, "container": args.bucket, "prefixes": prefixes,
                  "sas_token": sas}
    return {
        "version": 1,
        "import_id": str(uuid.uuid4()),
        "workspace_id": "demo",
        "dataset_id": args.dataset or f"demo-{args.provider}-{args.mode}",
        "mode": args.mode,
        "source": source,
        "filter": {"extensions": ["jpg", "png"]},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--provider", choices=["s3", "gcs", "azure"], default="s3")
    p.add_argument("--endpoint", help="the emulator; default from AWS_ENDPOINT_URL_S3, STORAGE_EMULATOR_HOST "
                   "or TETHER_AZURE_BLOB_ENDPOINT (its {account} filled in)")
    p.add_argument("--bucket", default="tether-demo", help="bucket, or Azure container")
    p.add_argument("--account", default=AZURE_ACCOUNT, help="Azure storage account")
    p.add_argument("--account-key", default=os.environ.get("TETHER_TEST_AZURITE_KEY"),
                   help="Azure account key (default TETHER_TEST_AZURITE_KEY); signs the SAS tokens")
    p.add_argument("--count", type=int, default=60)
    p.add_argument("--mode", choices=["link", "copy"], default="link")
    p.add_argument("--dataset", help="dataset id (default demo-PROVIDER-MODE)")
    p.add_argument("--request-out", metavar="FILE", help="write a sample ImportRequest here")
    p.add_argument("--no-upload", action="store_true", help="only write the request")
    args = p.parse_args()
    if args.provider == "azure" and not args.account_key:
        p.error("--provider azure needs --account-key or TETHER_TEST_AZURITE_KEY")

    if not args.no_upload:
        if args.provider == "s3":
            seed_s3(args.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9560"),
                    args.bucket, args.count)
        elif args.provider == "gcs":
            seed_gcs(args.endpoint or os.environ.get("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443"),
                     args.bucket, args.count)
        else:
            template = os.environ.get("TETHER_AZURE_BLOB_ENDPOINT", "http://127.0.0.1:10000/{account}")
            seed_azure(args.endpoint or template.replace("{account}", args.account),
                       args.account, args.account_key, args.bucket, args.count)
    if args.request_out:
        req = request(args)
        with open(args.request_out, "w") as f:
            json.dump(req, f, indent=2)
            f.write("\n")
        print(f"wrote {args.provider} {args.mode} ImportRequest {req['import_id']} to {args.request_out}")


if __name__ == "__main__":
    main()
