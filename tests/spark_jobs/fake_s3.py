"""An in-memory stand-in for the few boto3 S3 calls DumpStore makes, for unit tests only."""

from __future__ import annotations

import io


class _NoSuchKey(Exception):
    pass


class _Exceptions:
    NoSuchKey = _NoSuchKey


class _Paginator:
    def __init__(self, s3: FakeS3, page_size: int):
        self.s3, self.page_size = s3, page_size

    def paginate(self, Bucket: str, Prefix: str = "", Delimiter: str | None = None):
        keys = sorted(k for (b, k) in self.s3.objects if b == Bucket and k.startswith(Prefix))
        if Delimiter:
            prefixes = sorted({Prefix + k[len(Prefix):].split(Delimiter)[0] + Delimiter
                               for k in keys if Delimiter in k[len(Prefix):]})
            keys = [k for k in keys if Delimiter not in k[len(Prefix):]]
        else:
            prefixes = []
        # Several pages, like S3 with its 1000-key limit, so callers must follow them.
        for i in range(0, max(len(keys), len(prefixes), 1), self.page_size):
            yield {
                "Contents": [{"Key": k, "Size": len(self.s3.objects[(Bucket, k)])} for k in keys[i:i + self.page_size]],
                "CommonPrefixes": [{"Prefix": p} for p in prefixes[i:i + self.page_size]],
            }


class FakeS3:
    exceptions = _Exceptions

    def __init__(self, page_size: int = 2):
        self.objects: dict[tuple[str, str], bytes] = {}
        self.page_size = page_size
        self.calls: list[tuple] = []

    def put(self, bucket: str, key: str, body: bytes = b"x") -> None:
        self.objects[(bucket, key)] = body

    def keys(self, bucket: str) -> list[str]:
        return sorted(k for (b, k) in self.objects if b == bucket)

    def get_paginator(self, name: str) -> _Paginator:
        assert name == "list_objects_v2"
        return _Paginator(self, self.page_size)

    def get_object(self, Bucket: str, Key: str) -> dict:
        if (Bucket, Key) not in self.objects:
            raise _NoSuchKey(Key)
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentType: str = "") -> dict:
        self.calls.append(("put", Key))
        self.objects[(Bucket, Key)] = Body
        return {}

    def delete_objects(self, Bucket: str, Delete: dict) -> dict:
        assert len(Delete["Objects"]) <= 1000
        for item in Delete["Objects"]:
            self.calls.append(("delete", item["Key"]))
            self.objects.pop((Bucket, item["Key"]), None)
        return {}
