"""A registry in an S3-compatible object store (`STREAMSCORE_MODEL_ROOT=s3://bucket/prefix`), through obstore.

The same keys as a folder, under the URL's prefix: `s3://bucket/prefix/<name>/<version>/manifest.json`.
An object store has no rename, so a version cannot appear all at once; it is made safe instead by
conditional writes (`If-None-Match: *`, obstore's `mode="create"`): every file of a version is
created only if absent, and the manifest, written last, is what makes a version exist. Of two
pushers racing for one version exactly one creates its manifest; the other gets a StorageError.
A version whose files are there without a manifest (a push under way, or interrupted) is never
listed or served. Manifest history is appended with `If-Match` on the ETag read (`update`), so
concurrent appends are retried, never lost.

Credentials and endpoint come from the standard AWS variables, read by obstore when the store is
made: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or
AWS_DEFAULT_REGION), AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), and the web-identity / container /
instance-metadata credentials of EKS, ECS and EC2. obstore does not read the shared credentials
file, so when no AWS_ACCESS_KEY_ID is set, `profile_config` reads it here: the keys of the profile
AWS_PROFILE names (default `default`) from AWS_SHARED_CREDENTIALS_FILE (default
`~/.aws/credentials`), and that profile's region from AWS_CONFIG_FILE (`~/.aws/config`).
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import S3Store

from artifacts.storage import StorageError, check_key

SCHEME = "s3://"
UPDATE_ATTEMPTS = 10  # conditional appends to one manifest, each after another writer got in first
RETRY = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}  # obstore retries 5xx and timeouts
DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken")
CREDENTIALS_HINT = (
    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), AWS_ENDPOINT_URL_S3 or "
    "AWS_ENDPOINT_URL, AWS_REGION, and that these credentials may read and write the bucket"
)


def profile_config(environ: Mapping[str, str], home: Path) -> dict[str, str]:
    """Credentials (and region) from the shared AWS files, when the environment gives no key: the
    profile AWS_PROFILE names (default `default`). Empty when there is a key, or no such profile."""
    if environ.get("AWS_ACCESS_KEY_ID"):
        return {}
    profile = environ.get("AWS_PROFILE") or "default"
    credentials = _section(Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"), profile)
    if not credentials.get("aws_access_key_id") or not credentials.get("aws_secret_access_key"):
        return {}
    found = {
        "access_key_id": credentials["aws_access_key_id"],
        "secret_access_key": credentials["aws_secret_access_key"],
    }
    if credentials.get("aws_session_token"):
        found["token"] = credentials["aws_session_token"]
    config_file = Path(environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config")
    region = _section(config_file, profile if profile == "default" else f"profile {profile}").get("region")
    if region and not (environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")):
        found["region"] = region
    return found


def _section(path: Path, name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except (OSError, configparser.Error):
        return {}
    return dict(parser[name]) if parser.has_section(name) else {}


def is_object_store(root: str) -> bool:
    """Whether a model root names an object store rather than a folder."""
    return root.startswith(SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """The bucket and prefix of `s3://bucket/prefix` (the prefix without slashes around it, maybe empty)."""
    if not is_object_store(url):
        raise StorageError(f"{url!r} is not an s3:// URL")
    bucket, _, prefix = url[len(SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise StorageError(f"{url!r} names no valid bucket: write s3://<bucket>/<prefix>")
    if prefix:
        object_path(prefix)
    return bucket, prefix


def object_path(key: str) -> str:
    """The store path of a registry key (relative to the URL's prefix): the key itself, one to one.
    StorageError if it could leave the prefix ('..', absolute) or names one object two ways ('a//b', 'a/./b')."""
    path = check_key(key).as_posix()
    if path != key:
        raise StorageError(f"registry key {key!r} must be a relative path without '..', '.' or empty parts")
    return path


def s3_code(error: BaseException) -> str:
    """The S3 error code in an obstore error's message (`<Code>AccessDenied</Code>`), or ""."""
    found = re.search(r"<Code>(\w+)</Code>", str(error))
    return found.group(1) if found else ""


def http_status(error: BaseException) -> str:
    """The HTTP status an obstore error reports ("403 Forbidden"), or "" (HEAD answers have no error body)."""
    found = re.search(r"status code: (\d{3}[ A-Za-z]*?)(?::|$)", str(error), flags=re.M)
    return found.group(1).strip() if found else ""


def endpoint_of(error: BaseException) -> str:
    """The scheme and host an obstore error says it sent the request to, or ""."""
    found = re.search(r"(https?://[^/\s]+)", str(error))
    return found.group(1) if found else ""


class S3Storage:
    """A registry in an S3-compatible bucket, under a prefix. Writes are conditional (If-None-Match, If-Match)."""

    hand_copies = False  # files without a manifest are a push under way or interrupted, never a model to serve

    def __init__(self, url: str, **config: Any) -> None:
        """`config`: obstore S3Config values over the AWS variables (tests pass credentials this way)."""
        bucket, prefix = split_url(url)
        self.url = f"{SCHEME}{bucket}/{prefix}".rstrip("/")
        self.store = S3Store(
            bucket,
            prefix=prefix or None,
            client_options={"allow_http": True},  # an http:// endpoint is the operator's explicit choice
            retry_config=RETRY,  # type: ignore[arg-type]
            **{**profile_config(os.environ, Path.home()), **config},  # the AWS variables, as obstore reads them
        )

    def __str__(self) -> str:
        return self.url

    def read(self, key: str) -> bytes:
        return self._read(key)[0]

    def _read(self, key: str) -> tuple[bytes, str | None]:
        """The bytes under `key` and their ETag."""
        try:
            result = obstore.get(self.store, object_path(key))
            return bytes(result.bytes()), result.meta["e_tag"]
        except FileNotFoundError:
            raise StorageError(f"no {key} in the registry at {self.url}") from None
        except BaseError as error:
            raise self._failure("read", key, error) from None

    def write_new(self, key: str, data: bytes) -> None:
        if not self._create(key, data):
            raise StorageError(f"{key} already exists in the registry at {self.url}; versions are immutable")

    def _create(self, key: str, data: bytes) -> bool:
        """Store `data` under `key` if nothing is there (If-None-Match: *); False if something is."""
        try:
            obstore.put(self.store, object_path(key), data, mode="create")
            return True
        except AlreadyExistsError:
            return False
        except BaseError as error:
            raise self._failure("write", key, error) from None

    def write_version(self, prefix: str, files: Mapping[str, bytes]) -> None:
        """Create each file in order, the last (the manifest) last: it commits the version.

        A file already there with the same bytes is kept (a push resumed, or an identical one
        racing); with other bytes it is another push's, and this one stops.
        """
        if not files:
            raise StorageError(f"a version holds at least its manifest; nothing to write under {prefix}")
        *body, (last, committing) = files.items()
        for relative, data in body:
            key = f"{prefix}/{relative}"
            if not self._create(key, data) and self.read(key) != data:
                raise StorageError(
                    f"{key} is already in the registry at {self.url} with other bytes: another push of {prefix} "
                    "is under way or was interrupted. Versions are immutable: push a new version, or delete "
                    f"{self.url}/{prefix}/ if no push is under way"
                )
        if not self._create(f"{prefix}/{last}", committing):
            raise StorageError(
                f"{prefix} already exists in the registry at {self.url} (another push made it first); "
                "versions are immutable: write a new version"
            )

    def replace(self, key: str, data: bytes) -> None:
        try:
            obstore.put(self.store, object_path(key), data, mode="overwrite")
        except BaseError as error:
            raise self._failure("write", key, error) from None

    def update(self, key: str, change: Callable[[bytes], bytes]) -> None:
        """Replace `key` by `change(current)`, only if no one wrote it since it was read (If-Match on the ETag)."""
        for _ in range(UPDATE_ATTEMPTS):
            data, etag = self._read(key)
            try:
                obstore.put(self.store, object_path(key), change(data), mode={"e_tag": etag})
                return
            except PreconditionError:
                continue  # another writer got in between: read its version and apply the change again
            except BaseError as error:
                raise self._failure("write", key, error) from None
        raise StorageError(
            f"{key} in the registry at {self.url} changed under each of {UPDATE_ATTEMPTS} updates; try again"
        )

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self.store, object_path(key))
            return True
        except FileNotFoundError:
            return False
        except BaseError as error:
            raise self._failure("read", key, error) from None

    def list(self, prefix: str) -> list[str]:
        try:
            found = obstore.list_with_delimiter(self.store, object_path(prefix) if prefix else None)
        except BaseError as error:
            raise self._failure("list", prefix, error) from None
        paths = [*found["common_prefixes"], *(meta["path"] for meta in found["objects"])]
        return sorted(name for name in (p.rsplit("/", 1)[-1] for p in paths) if not name.startswith("."))

    def local_path(self, key: str) -> Path | None:
        return None

    def _failure(self, action: str, key: str, error: BaseException) -> StorageError:
        """A StorageError saying what failed, where (endpoint, bucket, key), and what to check."""
        code, status = s3_code(error), http_status(error)
        where = f"{self.url}/{key}".rstrip("/")
        at = f"the object store at {endpoint_of(error) or 'the AWS endpoint'}"
        if code in DENIED or status.startswith(("401", "403")):
            return StorageError(f"{at} refused to {action} {where} ({code or status}): {CREDENTIALS_HINT}")
        if code == "NoSuchBucket":
            return StorageError(
                f"{at} has no bucket {self.url.split('/')[2]}: create it, or fix STREAMSCORE_MODEL_ROOT "
                "(s3://<bucket>/<prefix>) or AWS_ENDPOINT_URL_S3"
            )
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return StorageError(f"cannot {action} {where} at {at}: {first_line}")
