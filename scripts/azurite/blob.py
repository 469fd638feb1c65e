#!/usr/bin/env python3
"""A small Azure Blob REST client, independent of batchscore, for Azurite in the test suite.

It creates containers (object_store cannot) and reads back what batchscore wrote, so tests check
the blobs through a second implementation of the protocol: the Blob REST listing signed with
Shared Key by this file, and Parquet decoded by pyarrow when it is installed.

Usage (the emulator's URL comes from AZURITE_BLOB_STORAGE_URL, default http://127.0.0.1:10000):
  blob.py create-container NAME...
  blob.py list CONTAINER [PREFIX]          one JSON object per blob: name, size, type
  blob.py rows CONTAINER PREFIX            JSON: rows per Parquet blob under PREFIX (needs pyarrow)
  blob.py get CONTAINER NAME               the blob's bytes on stdout
  blob.py put-dir DIR CONTAINER PREFIX     uploads every file below DIR to PREFIX/
"""

import base64
import datetime
import hashlib
import hmac
import io
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

ACCOUNT = "devstoreaccount1"
# The emulator's published, well-known development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-08-06"


def base_url():
    return os.environ.get("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10000").rstrip("/")


def request(method, path, query=None, body=b"", headers=None):
    """Sends one Shared Key signed request; path is /container[/blob]."""
    query = query or {}
    headers = dict(headers or {})
    headers["x-ms-date"] = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%a, %d %b %Y %H:%M:%S GMT"
    )
    headers["x-ms-version"] = VERSION
    if method in ("PUT", "POST"):
        # Set explicitly: urllib would add a form content type, which the signature must cover.
        headers.setdefault("Content-Type", "application/octet-stream")
    length = str(len(body)) if body else ""
    canonical_headers = "".join(
        f"{k.lower()}:{v}\n" for k, v in sorted(headers.items()) if k.lower().startswith("x-ms-")
    )
    # The emulator's URLs carry the account in the path, so it appears twice in the resource.
    resource = f"/{ACCOUNT}/{ACCOUNT}{urllib.parse.quote(path)}"
    for k in sorted(query):
        resource += f"\n{k.lower()}:{query[k]}"
    content_type = headers.get("Content-Type", "")
    to_sign = "\n".join(
        [method, "", "", length, "", content_type, "", "", "", "", "", ""]
    ) + "\n" + canonical_headers + resource
    signature = base64.b64encode(
        hmac.new(base64.b64decode(KEY), to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    headers["Authorization"] = f"SharedKey {ACCOUNT}:{signature}"
    url = f"{base_url()}/{ACCOUNT}{urllib.parse.quote(path)}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    req = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None,
                                 method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as response:
        return response.read()


def create_container(name):
    try:
        request("PUT", f"/{name}", {"restype": "container"})
    except urllib.error.HTTPError as e:
        if e.code != 409:  # already exists
            raise


def list_blobs(container, prefix=""):
    blobs, marker = [], ""
    while True:
        query = {"restype": "container", "comp": "list", "prefix": prefix}
        if marker:
            query["marker"] = marker
        root = ET.fromstring(request("GET", f"/{container}", query))
        for blob in root.iter("Blob"):
            props = blob.find("Properties")
            blobs.append({
                "name": blob.findtext("Name"),
                "size": int(props.findtext("Content-Length")),
                "type": props.findtext("BlobType"),
            })
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return blobs


def get_blob(container, name):
    return request("GET", f"/{container}/{name}")


def put_dir(local, container, prefix):
    for root, _, files in os.walk(local):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, local).replace(os.sep, "/")
            with open(path, "rb") as f:
                body = f.read()
            request("PUT", f"/{container}/{prefix.rstrip('/')}/{rel}", body=body,
                    headers={"x-ms-blob-type": "BlockBlob"})


def rows(container, prefix):
    import pyarrow.parquet as pq

    out = {}
    for blob in list_blobs(container, prefix):
        if blob["name"].endswith(".parquet"):
            # Single-threaded: pyarrow 26's thread pool aborts the interpreter at exit now and
            # then ("terminate called without an active exception").
            table = pq.read_table(io.BytesIO(get_blob(container, blob["name"])), use_threads=False)
            out[blob["name"]] = table.num_rows
    return out


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    command, args = argv[1], argv[2:]
    if command == "create-container":
        for name in args:
            create_container(name)
    elif command == "list":
        for blob in list_blobs(args[0], args[1] if len(args) > 1 else ""):
            print(json.dumps(blob))
    elif command == "rows":
        print(json.dumps(rows(args[0], args[1])))
    elif command == "put-dir":
        put_dir(args[0], args[1], args[2])
    elif command == "get":
        sys.stdout.buffer.write(get_blob(args[0], args[1]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
