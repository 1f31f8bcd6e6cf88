"""A real S3-compatible server on 127.0.0.1 for the tests: moto's standalone server, with authentication on.

moto answers the S3 REST API over HTTP (conditional writes included: `If-None-Match: *` and
`If-Match` on PUT). By default it accepts any credentials; with INITIAL_NO_AUTH_ACTION_COUNT=N it
checks every request after the first N against its IAM: the access key must exist and the SigV4
signature must match its secret. The first N requests make that IAM user, its key and its policy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import boto3

REGION = "us-east-1"
SETUP_REQUESTS = 3  # create_user, create_access_key, put_user_policy: the only unauthenticated requests
ALLOW_S3 = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass(frozen=True)
class S3Server:
    """A running server and the one key it accepts."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    process: subprocess.Popen[bytes]

    def client(self, secret: str | None = None) -> Any:
        """A boto3 S3 client of this server (the test's own hands: making buckets, tampering with objects)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
        )

    def environ(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server with its key."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": REGION,
        }

    def new_bucket(self) -> str:
        """A fresh bucket's name."""
        bucket = f"ss-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(timeout_s: float = 30.0) -> S3Server:
    """Start the server, wait until it answers, make its user, key and policy."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for(port, process, timeout_s)
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup"
        )
        iam.create_user(UserName="streamscore")
        key = iam.create_access_key(UserName="streamscore")["AccessKey"]
        iam.put_user_policy(UserName="streamscore", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_S3))
    except BaseException:
        stop(process)
        raise
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], process)


def _wait_for(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode} before answering on port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"moto_server did not answer on 127.0.0.1:{port} within {timeout_s} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
