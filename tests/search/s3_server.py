"""A real S3-compatible server for the storage and cluster tests: moto in server mode on 127.0.0.1, run as its
own process (`python s3_server.py [--auth]` prints one JSON line: endpoint, bucket, keys). With --auth, IAM
authentication is on, so wrong keys and a read-only user are refused as S3 would refuse them.

Without --auth for the searches: moto 5.2 under werkzeug checks signatures against the URL werkzeug decodes,
where `%2F` in a query became `/`, so every signed listing with a slash in its prefix (all of Ray Tune's and
pyarrow's) is refused as SignatureDoesNotMatch. Authentication is a process-wide setting of moto, hence a
process per server."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

BUCKET = "normsearch-runs"
READ_ONLY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}],
}
ALL_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class S3:
    """The server's endpoint, the bucket, and the keys of a user who may write and one who may only read."""

    endpoint: str
    bucket: str
    writer: tuple[str, str]
    reader: tuple[str, str]

    def env(self, keys: tuple[str, str] | None = None) -> dict[str, str]:
        """The AWS variables a process needs to use this server (the writer's keys unless told)."""
        key, secret = keys or self.writer
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):
        import boto3

        key, secret = self.writer
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )

    def keys_under(self, prefix: str) -> list[str]:
        """Every object key under a prefix of the bucket (the listing the tests assert)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _moto_app():
    """moto's S3 WSGI app. moto 5.2 answers CompleteMultipartUpload with a `CompleteMultipartUploadResponse`
    root element where S3 (and so pyarrow >= 20, which checks for an error embedded in the 200 reply) expects
    `CompleteMultipartUploadResult`; the reply is renamed on its way out, so that multipart uploads (how
    pyarrow writes every object) complete as they do on S3."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.wrappers import Response

    app = DomainDispatcherApplication(create_backend_app)

    def fixed(environ, start_response):
        response = Response.from_app(app, environ)
        body = response.get_data()
        if b"CompleteMultipartUploadResponse" in body:
            response.set_data(
                body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
            )
        return response(environ, start_response)

    return fixed


def start_s3(auth: bool = True) -> tuple[S3, Callable[[], None]]:
    """Start the server: a bucket, a writer and a read-only user; with `auth`, every request after the set-up
    is authenticated. Returns the S3 and the function that stops the server."""
    import boto3
    import requests
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, _moto_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.port}"
    setup = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    setup |= {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **setup)
    keys = {}
    for user, policy in (("writer", ALL_POLICY), ("reader", READ_ONLY_POLICY)):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
        made = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = (made["AccessKeyId"], made["SecretAccessKey"])
    boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
    if auth:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    return S3(endpoint, BUCKET, keys["writer"], keys["reader"]), server.shutdown


def main() -> None:
    """Serve until stdin closes (the test session ended or died), after one JSON line saying where."""
    from dataclasses import asdict

    server, stop = start_s3(auth="--auth" in sys.argv)
    print(json.dumps(asdict(server)), flush=True)
    sys.stdin.read()
    stop()


if __name__ == "__main__":
    main()
