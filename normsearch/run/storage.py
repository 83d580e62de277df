"""A run's storage off the driver: object storage (S3 and compatible stores, GCS) or a shared path (NFS).

With `storage: URI` (`normsearch run --storage URI`), Ray Tune keeps its experiments there, so per-epoch
checkpoints and final weights are written by whichever node trains a trial and read by any other, and the
driver's run folder is mirrored next to them after every record::

    <URI>/<run>/recipe.yaml, space.yaml, trials.jsonl, study.db, warm_start.json, pretrained/...
    <URI>/<run>/tune/attempt-<k>/<trial>/checkpoint_<n>/state.pt     (Ray Tune's storage_path)

so that `normsearch resume <URI>/<run>` on another machine restores the folder and continues. The URI is
anything `pyarrow.fs` understands; S3 credentials and endpoint are read the standard AWS way
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`), and the
filesystem is built here (not by Ray from the URI) so that the endpoint and short timeouts hold on every
node: Ray pickles it to the trials. This module knows the run folder's file names; nothing else does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normsearch.errors import NormsearchError
from normsearch.run.checkpoints import SUMMARY, read_state
from normsearch.run.checkpoints import checkpoint_epoch as local_epoch
from normsearch.run.files import first_line

if TYPE_CHECKING:
    import pyarrow.fs

    from normsearch.train import TrainState

SCHEMES = ("s3", "gs", "gcs", "file")
PROBE_SECONDS = 20.0  # a storage check gives up after this long (an endpoint that never answers)
CONNECT_SECONDS = 3.0
REQUEST_SECONDS = 5.0


def is_uri(text: str | os.PathLike) -> bool:
    """Whether `text` names storage by URI (``scheme://...``) rather than a local path."""
    return "://" in str(text)


def _s3_filesystem(netloc: str) -> pyarrow.fs.FileSystem:
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return fs.S3FileSystem(
        endpoint_override=endpoint or None,
        region=region or None,
        connect_timeout=CONNECT_SECONDS,
        request_timeout=REQUEST_SECONDS,
        # A wrong endpoint or credentials must fail within seconds, not after the SDK's 10 retries.
        retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=2),
    )


def _error_reason(error: BaseException) -> str:
    """What an S3/GCS/OS error means, in words a user can act on."""
    text = first_line(error)
    known = [
        ("NoSuchBucket", "the bucket does not exist"),
        ("InvalidAccessKeyId", "the credentials are wrong (AWS_ACCESS_KEY_ID is not known to the store)"),
        ("SignatureDoesNotMatch", "the credentials are wrong (AWS_SECRET_ACCESS_KEY does not match)"),
        ("AccessDenied", "access denied: these credentials may not write here"),
        ("Permission denied", "permission denied: this process may not write here"),
        ("curlCode: 7", "nothing answers at the endpoint (AWS_ENDPOINT_URL)"),
        ("curlCode: 28", "the endpoint did not answer in time (AWS_ENDPOINT_URL)"),
        ("curlCode: 6", "the endpoint's host name does not resolve (AWS_ENDPOINT_URL)"),
        ("Couldn't connect", "nothing answers at the endpoint (AWS_ENDPOINT_URL)"),
    ]

    def squeeze(words: str) -> str:  # NoSuchBucket, NO_SUCH_BUCKET and "no such bucket" alike
        return "".join(c for c in words.lower() if c.isalnum())

    for needle, meaning in known:
        if squeeze(needle) in squeeze(text):
            return f"{meaning}; {text[:200]}"
    return text[:300]


def _bounded(what: Callable[[], Any], seconds: float, where: str) -> Any:
    """Run `what` in a thread for at most `seconds` (an SDK that retries a dead endpoint must not hang)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = what()
        except BaseException as error:  # handed to the caller's thread
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise NormsearchError(f"{where}: no answer after {seconds:.0f} s (is the endpoint up?)")
    if "error" in box:
        error = box["error"]
        if isinstance(error, NormsearchError):
            raise error
        raise NormsearchError(f"{where}: {_error_reason(error)}") from None
    return box.get("value")


@dataclass
class Storage:
    """Where a run's Tune experiments and its mirrored folder live: `filesystem` and the `root` path in it
    (``bucket/prefix`` for S3), as given by `uri`."""

    uri: str
    filesystem: Any
    root: str
    flag: str = "storage"

    @classmethod
    def parse(cls, uri: str, flag: str = "storage") -> Storage:
        """The storage a URI names; an unknown scheme or an unusable URI is one line."""
        from urllib.parse import urlparse

        uri = uri.rstrip("/")
        scheme = urlparse(uri).scheme if is_uri(uri) else ""
        if scheme and scheme not in SCHEMES:
            raise NormsearchError(
                f"{flag} {uri}: unknown scheme {scheme!r}; allowed: s3://bucket/prefix, gs://bucket/prefix, "
                "file:///path or a path (NFS)"
            )
        try:
            if scheme == "s3":
                netloc = urlparse(uri).netloc
                if not netloc:
                    raise ValueError("no bucket")
                return cls(uri, _s3_filesystem(netloc), uri.removeprefix("s3://").rstrip("/"), flag)
            from pyarrow import fs

            if not scheme:
                path = str(Path(uri).resolve())
                return cls(path, fs.LocalFileSystem(), path, flag)
            filesystem, root = fs.FileSystem.from_uri(uri)
        except (ValueError, OSError, ImportError) as error:
            detail = first_line(error)
            raise NormsearchError(f"{flag} {uri}: not a storage URI pyarrow can open ({detail})") from None
        return cls(uri, filesystem, root.rstrip("/"), flag)

    # --- places ---------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """A path inside the storage's filesystem (no scheme): root/part/part..."""
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def url(self, *parts: str) -> str:
        """The URI of a place inside the storage (for messages and `resume`)."""
        return "/".join([self.uri, *[p.strip("/") for p in parts if p]])

    # --- checks ---------------------------------------------------------------------------------------
    def probe(self, seconds: float = PROBE_SECONDS) -> None:
        """Write, read back and delete a small object under the root; any failure (no bucket, wrong
        credentials, an endpoint that does not answer, no write permission) is one line."""
        token = uuid.uuid4().hex.encode()
        where = self.path(f".normsearch-probe-{token.decode()[:12]}")

        def roundtrip() -> None:
            if self.filesystem.type_name == "local":  # object stores have no folders to make
                self.filesystem.create_dir(self.root, recursive=True)
            with self.filesystem.open_output_stream(where) as out:
                out.write(token)
            with self.filesystem.open_input_stream(where) as src:
                back = src.read()
            self.filesystem.delete_file(where)
            if back != token:
                raise NormsearchError(f"{self.flag} {self.uri}: an object written here reads back different")

        _bounded(roundtrip, seconds, f"{self.flag} {self.uri}: cannot write, read and delete an object here")

    def holds(self, *parts: str) -> bool:
        """Whether the file root/parts... exists in the storage."""
        from pyarrow.fs import FileType

        where = self.path(*parts)
        info = _bounded(lambda: self.filesystem.get_file_info(where), PROBE_SECONDS, self.url(*parts))
        return info.type == FileType.File

    # --- files ----------------------------------------------------------------------------------------
    def upload(self, local: Path, remote: str) -> None:
        with local.open("rb") as src, self.filesystem.open_output_stream(remote) as out:
            shutil.copyfileobj(src, out, 1 << 20)

    def download(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with self.filesystem.open_input_stream(remote) as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def listing(self, prefix: str) -> list[str]:
        """Every file under `prefix` (paths inside the filesystem); empty when there is none."""
        from pyarrow.fs import FileSelector, FileType

        infos = self.filesystem.get_file_info(FileSelector(prefix, recursive=True, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == FileType.File)

    def restore(self, run: str, local: Path, marker: str, skip: str) -> None:
        """Download a mirrored run folder into `local`, leaving out the folder `skip` (Tune's, read in
        place), the file `marker` last (its presence marks a complete run folder)."""
        prefix = self.path(run)
        files = [p for p in self.listing(prefix) if not p.startswith(f"{prefix}/{skip}/")]
        names = [p.removeprefix(prefix + "/") for p in files]
        if marker not in names:
            raise NormsearchError(f"{self.url(run)}: no run kept here (no {marker}); is the URI right?")
        local.mkdir(parents=True, exist_ok=True)
        for name in sorted(names, key=lambda n: n == marker):
            self.download(self.path(run, name), local / name)

    # --- Tune's experiments and checkpoints -----------------------------------------------------------
    def experiments(self, base: str, prefix: str) -> list[str]:
        """Names of the Tune experiments under `base` (a run's Tune path) that start with `prefix`."""
        from pyarrow.fs import FileSelector, FileType

        infos = self.filesystem.get_file_info(FileSelector(base, allow_not_found=True))
        return [i.base_name for i in infos if i.type == FileType.Directory and i.base_name.startswith(prefix)]

    def newest_checkpoint(self, base: str, experiments: list[str], trial_dir: str) -> str | None:
        """The URI-less path of the newest epoch checkpoint a trial left in the given experiments (the
        later experiment on a tie), read from each checkpoint's small summary file; None when none."""
        best: tuple[int, int, str] | None = None
        for order, name in enumerate(experiments):
            for path in self.listing(f"{base}/{name}/{trial_dir}"):
                folder, _, leaf = path.rpartition("/")
                if leaf != SUMMARY or not folder.rpartition("/")[2].startswith("checkpoint_"):
                    continue
                epoch = _summary_epoch(self, path)
                if epoch >= 0 and (best is None or (epoch, order) > best[:2]):
                    best = (epoch, order, folder)
        return None if best is None else f"{self.uri}{best[2].removeprefix(self.root)}"


def _summary_epoch(storage: Storage, path: str) -> int:
    import json

    try:
        with storage.filesystem.open_input_stream(path) as src:
            return int(json.loads(src.read())["epoch"])
    except (OSError, ValueError, KeyError):
        return -1


def split_run_uri(uri: str) -> tuple[Storage, str]:
    """`<storage URI>/<run>` as (its storage, the run's name), for `normsearch resume URI`."""
    base, _, run = uri.rstrip("/").rpartition("/")
    if not run or not is_uri(base + "/"):
        raise NormsearchError(f"{uri}: give the run's URI, <storage>/<run>, e.g. s3://bucket/prefix/my-run")
    return Storage.parse(base, flag="resume"), run


def read_checkpoint(location: str | Path) -> TrainState:
    """The TrainState in a checkpoint folder given by local path or by storage URI (downloaded to a
    temporary folder first); a trial continuing on any node reads its checkpoint through here."""
    if not is_uri(location):
        return read_state(location)
    storage = Storage.parse(str(location))  # its root is the checkpoint folder itself
    with tempfile.TemporaryDirectory(prefix="normsearch-ckpt-") as tmp:
        for path in storage.listing(storage.root):
            storage.download(path, Path(tmp) / path.removeprefix(storage.root + "/"))
        return read_state(tmp)


def checkpoint_epoch(location: str | Path) -> int:
    """The epoch a checkpoint folder holds, given by local path or by storage URI (-1: incomplete)."""
    if not is_uri(location):
        return local_epoch(Path(location))
    storage = Storage.parse(str(location))
    return _summary_epoch(storage, storage.path(SUMMARY))


def storage_of(recipe_storage: str | None) -> Storage | None:
    """The storage a recipe names (`storage:`), or None for a run kept in its local folder only."""
    return Storage.parse(recipe_storage) if recipe_storage else None
