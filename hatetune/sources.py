"""Fetching a task's dataset into data/raw/<task>/: HTTPS file, Hugging Face Hub dataset, local path, or mirror.

Every source ends as a folder of data files (CSV, TSV or parquet, in the upstream schema) plus `manifest.json`
(where they came from, sha256, bytes, rows). The folder appears complete or not at all.

Offline mirror: when `download.mirror` or $HATETUNE_MIRROR names a folder, every source resolves to
`<mirror>/<source.name>/` and the network is never touched. The HF token is read from $HF_TOKEN at the moment
it is needed and is never written to the manifest, logs or errors.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import HatetuneError
from .io import atomic_path, sha256_file, write_json

MIRROR_ENV = "HATETUNE_MIRROR"
MANIFEST = "manifest.json"
DATA_SUFFIXES = (".csv", ".tsv", ".parquet")
# Worth retrying: the server or the path to it is having a moment.
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class TransientHTTPError(Exception):
    pass


# ----------------------------------------------------------------------------------------------- mirror
def mirror_root(configured: Optional[str] = None) -> Optional[Path]:
    """The offline mirror folder: `download.mirror` if set, else $HATETUNE_MIRROR, else None (use the network)."""
    chosen = configured or os.environ.get(MIRROR_ENV) or None
    if chosen is None:
        return None
    root = Path(chosen).expanduser().resolve()
    if not root.is_dir():
        origin = "download.mirror" if configured else f"${MIRROR_ENV}"
        raise HatetuneError(f"the offline mirror {root} ({origin}) is not a folder", field=origin)
    return root


def data_files(folder: Path) -> list[Path]:
    """Data files under `folder` (any depth), sorted so every run sees them in the same order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)


def mirror_files(source: Mapping[str, Any], mirror: Path) -> list[Path]:
    """The files the mirror holds for `source`; a clear error listing what was expected when there are none."""
    entry = mirror / source["name"]
    if source.get("filename") and (entry / source["filename"]).is_file():
        return [entry / source["filename"]]
    found = data_files(entry) if entry.is_dir() else []
    if not found:
        upstream = {"https": f"the upstream file ({source.get('filename') or source.get('url')})",
                    "hub": f"the data files of the Hub dataset {source.get('repo_id')} (parquet or CSV)",
                    "local": f"the file(s) of {source.get('path')}"}[source["kind"]]
        raise HatetuneError(f"the offline mirror has no entry for source '{source['name']}': expected a folder "
                            f"{entry}/ holding {upstream} as {', '.join('*' + s for s in DATA_SUFFIXES)}",
                            file=str(entry))
    return found


def check_pin(source: Mapping[str, Any], files: Sequence[tuple[Path, str]]) -> bool:
    """Check a pinned `task.source.sha256` against the data files actually used, `files` = [(path, sha256)];
    return whether there was a pin. It pins ONE file: several files, or one with another sha256, fail saying so
    (a mirror may hold another version of the data than the upstream file the pin is for)."""
    pinned = (source.get("sha256") or "").lower()
    if not pinned:
        return False
    if len(files) != 1:
        raise HatetuneError(f"the pin is for one file, but the source has {len(files)} data files "
                            f"({', '.join(p.name for p, _ in files)}), so the pin cannot be checked: keep only the "
                            "pinned file, or unpin it (task.source.sha256=null)",
                            file=str(files[0][0].parent) if files else None, field="task.source.sha256")
    path, got = files[0]
    if got != pinned:
        other = source.get("filename") and path.name != source["filename"]
        raise HatetuneError(f"checksum mismatch: expected sha256 {pinned}, got {got}"
                            + (f" (the pin is for {source['filename']}; this is another file: unpin it, "
                               "task.source.sha256=null, to use it)" if other else ""),
                            file=str(path), field="task.source.sha256")
    return True


def resolve(source: Mapping[str, Any], mirror: Optional[Path]) -> dict:
    """Which files the task's data will come from, identified exactly and cheaply (the `sources` stage).

    With a mirror: its files and their sha256 (so editing or switching the mirror reruns download); online: the
    pinned URL / Hub revision (what `fetch` downloads). Never touches the network. A pinned sha256 is checked
    here against the mirror's or local file, and again by `fetch` against the file it copies or downloads.
    """
    upstream = {"https": {"url": source.get("url"), "sha256": (source.get("sha256") or "").lower() or None},
                "hub": {"repo_id": source.get("repo_id"), "revision": source.get("revision"),
                        "split": source.get("hub_split")},
                "local": {"path": source.get("path")}}[source["kind"]]
    if mirror is not None:
        found, base = mirror_files(source, mirror), mirror / source["name"]
    elif source["kind"] == "local":
        found, base = _local_files(source["path"])
    else:
        return {"kind": source["kind"], **upstream}
    digests = [(f, sha256_file(f)) for f in found]
    check_pin(source, digests)
    files = [{"path": f.relative_to(base).as_posix() if f.is_relative_to(base) else f.name, "sha256": digest}
             for f, digest in digests]
    if mirror is not None:
        return {"kind": "mirror", "entry": source["name"], "files": files, "instead_of": {source["kind"]: upstream}}
    return {"kind": "local", "path": str(base.resolve()), "files": files}


def describe(resolved: Mapping[str, Any]) -> str:
    """One line naming the data actually used, for logs and the model card."""
    if resolved["kind"] in ("mirror", "local"):
        files = ", ".join(f"{f['path']} (sha256 {f['sha256'][:12]}…)" for f in resolved["files"])
        where = f"offline mirror entry `{resolved['entry']}`" if resolved["kind"] == "mirror" else resolved["path"]
        return f"{files} from the {where}"
    if resolved["kind"] == "https":
        return f"{resolved['url']} (sha256 {'pinned' if resolved['sha256'] else 'not pinned'})"
    return f"Hugging Face dataset {resolved['repo_id']} @ {resolved['revision']}"


# ------------------------------------------------------------------------------------------------ HTTPS
def download_https(url: str, dest: Path, *, sha256: Optional[str] = None, retries: int = 3,
                   timeout_s: float = 60.0, backoff_s: float = 1.0) -> str:
    """Download `url` to `dest` (atomically, with a progress bar); retry timeouts, dropped connections and 5xx.

    Returns the file's sha256; raises when it differs from a pinned `sha256` (and leaves no file behind).
    """
    import requests
    from tqdm import tqdm

    for attempt in range(retries + 1):
        try:
            with requests.get(url, stream=True, timeout=timeout_s) as response:
                if response.status_code in TRANSIENT_STATUS:
                    raise TransientHTTPError(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise HatetuneError(f"download failed: HTTP {response.status_code} {response.reason}",
                                        file=url)
                total = int(response.headers.get("content-length") or 0) or None
                digest = hashlib.sha256()
                with atomic_path(dest) as tmp, open(tmp, "wb") as f, \
                        tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                    for chunk in response.iter_content(chunk_size=1 << 16):
                        f.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                    f.close()
                    got = digest.hexdigest()
                    if sha256 and got != sha256.lower():
                        raise HatetuneError(f"checksum mismatch: expected sha256 {sha256.lower()}, got {got}",
                                            file=dest.name, field="task.source.sha256")
                return got
        except (TransientHTTPError, requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as err:
            if attempt == retries:
                raise HatetuneError(f"download failed after {retries + 1} attempts ({err.__class__.__name__}: "
                                    f"{err}); to work offline set ${MIRROR_ENV} to a mirror folder",
                                    file=url) from None
            time.sleep(backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------- Hub
def fetch_hub_dataset(repo_id: str, revision: str, split: Optional[str], dest: Path) -> None:
    """Save one split of a Hub dataset, pinned to `revision`, as parquet. Token: $HF_TOKEN, never stored."""
    import datasets
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        dataset = datasets.load_dataset(repo_id, revision=revision, split=split or "train",
                                        token=os.environ.get("HF_TOKEN") or None)
    except Exception as err:  # noqa: BLE001 - each Hub failure becomes one clear message
        chain = [err]
        while chain[-1].__cause__ is not None and len(chain) < 10:
            chain.append(chain[-1].__cause__)
        if any(isinstance(e, RevisionNotFoundError) for e in chain):
            raise HatetuneError(f"revision {revision} does not exist for {repo_id}",
                                field="task.source.revision") from None
        if isinstance(err, datasets.exceptions.DatasetNotFoundError):
            raise HatetuneError(f"{err} (set $HF_TOKEN for a gated dataset)", field="task.source.repo_id") from None
        if isinstance(err, (ConnectionError, OSError)):
            raise HatetuneError(f"could not reach the Hugging Face Hub for {repo_id} ({err.__class__.__name__}); "
                                f"to work offline set ${MIRROR_ENV} to a folder holding the dataset's data files",
                                field="task.source") from None
        raise
    dataset.to_parquet(str(dest))


# ------------------------------------------------------------------------------------------------ fetch
def count_rows(path: Path) -> Optional[int]:
    """Records in a data file, without judging it (the labels stage reports bad content precisely)."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        text = path.read_bytes().decode("utf-8", errors="replace")
        csv.field_size_limit(max(csv.field_size_limit(), 2 ** 31 - 1))  # a long post is no reason not to count
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        return max(sum(1 for rec in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if rec) - 1, 0)
    except Exception:  # noqa: BLE001 - unreadable: the labels stage says why
        return None


def _copy_files(files: list[Path], base: Path, into: Path) -> list[Path]:
    copied = []
    for src in files:
        rel = src.relative_to(base) if src.is_relative_to(base) else Path(src.name)
        dst = into / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        copied.append(dst)
    return copied


def _local_files(path: str) -> tuple[list[Path], Path]:
    p = Path(path).expanduser()
    if p.is_file():
        return [p], p.parent
    found = data_files(p) if p.is_dir() else []
    if not found:
        raise HatetuneError(f"no data files ({', '.join('*' + s for s in DATA_SUFFIXES)}) at {p}",
                            field="task.source.path")
    return found, p


def fetch(source: Mapping[str, Any], dest_dir: str | Path, *, mirror: Optional[Path] = None, retries: int = 3,
          timeout_s: float = 60.0, backoff_s: float = 1.0) -> dict:
    """Fetch `source` (the task.source config) into `dest_dir` with a manifest; return the manifest."""
    dest_dir = Path(dest_dir)
    kind = source["kind"]
    manifest: dict[str, Any] = {"source": source["name"], "kind": kind, "mirror": mirror is not None}
    manifest.update({"https": {"url": source.get("url")},
                     "hub": {"repo_id": source.get("repo_id"), "revision": source.get("revision"),
                             "split": source.get("hub_split")},
                     "local": {"path": source.get("path")}}[kind])
    pinned = (source.get("sha256") or "").lower() or None
    with atomic_path(dest_dir) as tmp:
        tmp.mkdir()
        if mirror is not None:
            found = mirror_files(source, mirror)
            files = _copy_files(found, mirror / source["name"], tmp)
        elif kind == "https":
            target = tmp / (source.get("filename") or Path(source["url"].split("?")[0]).name)
            download_https(source["url"], target, sha256=pinned, retries=retries, timeout_s=timeout_s,
                           backoff_s=backoff_s)
            found = files = [target]
        elif kind == "hub":
            target = tmp / f"{source.get('hub_split') or 'train'}.parquet"
            fetch_hub_dataset(source["repo_id"], source["revision"], source.get("hub_split"), target)
            found, files = [dest_dir / target.name], [target]
        else:
            found, base = _local_files(source["path"])
            files = _copy_files(found, base, tmp)
        digests = [sha256_file(f) for f in files]
        # the pin holds for the very files this folder will hold, whichever way they came (mirror included);
        # errors name them where the user can look (the mirror's or local file)
        verified = check_pin(source, list(zip(found, digests)))
        entries = [{"path": f.relative_to(tmp).as_posix(), "sha256": digest, "bytes": f.stat().st_size,
                    "rows": count_rows(f), "sha256_verified": verified} for f, digest in zip(files, digests)]
        manifest["files"] = entries
        manifest["sha256_pinned"] = pinned
        if not pinned and kind == "https":
            manifest["note"] = "no sha256 pinned: set task.source.sha256 to the file's sha256 above to verify it"
        write_json(tmp / MANIFEST, manifest)
    return manifest


def read_manifest(raw_dir: str | Path) -> dict:
    path = Path(raw_dir) / MANIFEST
    if not path.is_file():
        raise HatetuneError("no download manifest: run the download stage first", file=str(path))
    import json

    return json.loads(path.read_text(encoding="utf-8"))
