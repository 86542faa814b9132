"""hatetune.sources and the download stage: a real HTTP server on 127.0.0.1, a mirror folder, a mocked Hub."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hatetune import sources
from hatetune.errors import HatetuneError
from upstream_fixtures import write_dynahate, write_mhs

ROOT = Path(__file__).resolve().parents[1]
CONTENT = Path(__file__).read_bytes()[:3000]  # any bytes will do; a few KB so the body comes in chunks


class Server:
    """http.server in a thread. `plan[path]` = statuses to answer in turn (the last one repeats)."""

    def __init__(self):
        self.plan: dict[str, list[int]] = {}
        self.hits: dict[str, int] = {}
        self.body = b""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                n = server.hits[self.path] = server.hits.get(self.path, 0) + 1
                statuses = server.plan.get(self.path, [404])
                status = statuses[min(n, len(statuses)) - 1]
                body = server.body if status == 200 else b"nope"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def https_source(url: str, sha256=None, filename="data.csv") -> dict:
    return {"name": "dynahate", "kind": "https", "url": url, "sha256": sha256, "filename": filename}


HUB = {"name": "measuring-hate-speech", "kind": "hub", "repo_id": "ucberkeley-dlab/measuring-hate-speech",
       "revision": "5468f6e118396646b02a2f691e771f6b6d9502ea", "hub_split": "train"}


# ----------------------------------------------------------------------------------------------- HTTPS
def test_https_download_writes_file_and_manifest(server, tmp_path):
    csv_path = write_dynahate(tmp_path / "src.csv")
    server.body = csv_path.read_bytes()
    server.plan["/data.csv"] = [200]
    manifest = sources.fetch(https_source(server.url("/data.csv")), tmp_path / "raw", retries=0)

    out = tmp_path / "raw" / "data.csv"
    assert out.read_bytes() == server.body
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text()) == manifest
    [entry] = manifest["files"]
    assert entry == {"path": "data.csv", "sha256": hashlib.sha256(server.body).hexdigest(),
                     "bytes": len(server.body), "rows": 48, "sha256_verified": False}
    assert manifest["url"] == server.url("/data.csv") and manifest["mirror"] is False
    assert "sha256" in manifest["note"]  # tells the user to pin it


def test_https_retries_a_transient_503_then_succeeds(server, tmp_path):
    server.body = CONTENT
    server.plan["/flaky.csv"] = [503, 200]
    digest = hashlib.sha256(CONTENT).hexdigest()
    manifest = sources.fetch(https_source(server.url("/flaky.csv"), sha256=digest), tmp_path / "raw",
                             retries=2, backoff_s=0.01)
    assert server.hits["/flaky.csv"] == 2
    assert (tmp_path / "raw" / "data.csv").read_bytes() == CONTENT
    assert manifest["files"][0]["sha256_verified"] is True


def test_https_gives_up_after_the_retries(server, tmp_path):
    server.plan["/down.csv"] = [503]
    with pytest.raises(HatetuneError, match=r"after 3 attempts.*HATETUNE_MIRROR"):
        sources.download_https(server.url("/down.csv"), tmp_path / "x.csv", retries=2, backoff_s=0.01)
    assert server.hits["/down.csv"] == 3
    assert not (tmp_path / "x.csv").exists()


def test_https_does_not_retry_a_404(server, tmp_path):
    with pytest.raises(HatetuneError, match="HTTP 404"):
        sources.download_https(server.url("/missing.csv"), tmp_path / "x.csv", retries=3, backoff_s=0.01)
    assert server.hits["/missing.csv"] == 1


def test_https_checksum_mismatch_names_file_and_both_hashes(server, tmp_path):
    server.body = CONTENT
    server.plan["/data.csv"] = [200]
    wrong = "0" * 64
    with pytest.raises(HatetuneError) as err:
        sources.fetch(https_source(server.url("/data.csv"), sha256=wrong), tmp_path / "raw", retries=0)
    message = str(err.value)
    assert "data.csv" in message and wrong in message and hashlib.sha256(CONTENT).hexdigest() in message
    assert not (tmp_path / "raw").exists()  # nothing half-written
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- mirror
def test_mirror_is_used_and_the_network_never_touched(server, tmp_path):
    mirror = tmp_path / "mirror"
    src = write_dynahate(mirror / "dynahate" / "dynahate_v0.2.2_dev.csv")
    (mirror / "dynahate" / "SOURCE.md").write_text("notes, not data")
    manifest = sources.fetch(https_source(server.url("/data.csv"), filename="dynahate_v0.2.3.csv"),
                             tmp_path / "raw", mirror=mirror)
    assert server.hits == {}
    assert manifest["mirror"] is True
    assert [f["path"] for f in manifest["files"]] == ["dynahate_v0.2.2_dev.csv"]
    assert (tmp_path / "raw" / "dynahate_v0.2.2_dev.csv").read_bytes() == src.read_bytes()
    assert not (tmp_path / "raw" / "SOURCE.md").exists()


def test_mirror_checksum_is_checked_when_it_holds_the_pinned_file(tmp_path):
    mirror = tmp_path / "mirror"
    write_dynahate(mirror / "dynahate" / "dynahate_v0.2.3.csv")
    with pytest.raises(HatetuneError, match="checksum mismatch.*" + "1" * 64):
        sources.fetch(https_source("https://example.invalid/x.csv", sha256="1" * 64,
                                   filename="dynahate_v0.2.3.csv"), tmp_path / "raw", mirror=mirror)
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("step", ["resolve", "fetch"])
def test_a_pin_is_checked_against_the_mirror_file_actually_used_whatever_its_name(tmp_path, step):
    """The mirror holds another version than the pinned upstream file: that is said, never skipped."""
    mirror = tmp_path / "mirror"
    src = write_dynahate(mirror / "dynahate" / "dynahate_v0.2.2_dev.csv")
    source = https_source("https://example.invalid/x.csv", sha256="1" * 64, filename="dynahate_v0.2.3.csv")
    run = (lambda: sources.resolve(source, mirror)) if step == "resolve" else \
        (lambda: sources.fetch(source, tmp_path / "raw", mirror=mirror))
    with pytest.raises(HatetuneError) as err:
        run()
    assert err.value.file == str(src) and err.value.field == "task.source.sha256"
    assert "checksum mismatch" in err.value.message and "the pin is for dynahate_v0.2.3.csv" in err.value.message
    assert not (tmp_path / "raw").exists()

    source["sha256"] = hashlib.sha256(src.read_bytes()).hexdigest().upper()  # the right one, in capitals
    if step == "resolve":
        assert sources.resolve(source, mirror)["files"][0]["sha256"] == source["sha256"].lower()
    else:
        manifest = sources.fetch(source, tmp_path / "raw", mirror=mirror)
        assert manifest["files"][0]["sha256_verified"] is True


def test_a_pin_cannot_be_checked_against_several_files(tmp_path):
    mirror = tmp_path / "mirror"
    write_dynahate(mirror / "dynahate" / "a.csv")
    write_dynahate(mirror / "dynahate" / "b.csv")
    source = https_source("https://example.invalid/x.csv", sha256="1" * 64, filename=None)
    for run in (lambda: sources.resolve(source, mirror),
                lambda: sources.fetch(source, tmp_path / "raw", mirror=mirror)):
        with pytest.raises(HatetuneError, match=r"the source has 2 data files \(a.csv, b.csv\), so the pin cannot"):
            run()
    assert not (tmp_path / "raw").exists()


def test_a_local_source_is_checked_against_its_pin(tmp_path):
    src = write_dynahate(tmp_path / "in" / "dyna.csv")
    source = {"name": "dynahate", "kind": "local", "path": str(src), "sha256": "f" * 64}
    with pytest.raises(HatetuneError, match="checksum mismatch"):
        sources.resolve(source, None)
    with pytest.raises(HatetuneError, match="checksum mismatch"):
        sources.fetch(source, tmp_path / "raw")


def test_missing_mirror_entry_lists_what_was_expected(tmp_path):
    (tmp_path / "mirror" / "dynahate").mkdir(parents=True)
    with pytest.raises(HatetuneError) as err:
        sources.fetch(HUB, tmp_path / "raw", mirror=tmp_path / "mirror")
    message = str(err.value)
    assert "measuring-hate-speech" in message and "parquet" in message and "ucberkeley-dlab" in message
    assert not (tmp_path / "raw").exists()


def test_mirror_root_prefers_the_config_key_then_the_environment(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("HATETUNE_MIRROR", str(tmp_path / "b"))
    assert sources.mirror_root(str(tmp_path / "a")) == tmp_path / "a"
    assert sources.mirror_root(None) == tmp_path / "b"
    monkeypatch.delenv("HATETUNE_MIRROR")
    assert sources.mirror_root(None) is None
    with pytest.raises(HatetuneError, match="not a folder"):
        sources.mirror_root(str(tmp_path / "nope"))


def test_local_path_source(tmp_path):
    src = write_dynahate(tmp_path / "in" / "dyna.csv")
    manifest = sources.fetch({"name": "dynahate", "kind": "local", "path": str(src)}, tmp_path / "raw")
    assert manifest["path"] == str(src) and manifest["files"][0]["rows"] == 48
    assert (tmp_path / "raw" / "dyna.csv").read_bytes() == src.read_bytes()


# ------------------------------------------------------------------------------------------------- Hub
def test_hub_dataset_is_saved_as_parquet_and_the_token_is_written_nowhere(tmp_path, monkeypatch, capsys):
    import datasets
    import pandas as pd

    secret = "hf_SECRET_token_for_the_test_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    calls = []

    def fake_load_dataset(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return datasets.Dataset.from_pandas(pd.read_parquet(write_mhs(tmp_path / "hub.parquet")))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    manifest = sources.fetch(HUB, tmp_path / "raw")
    assert calls == [(HUB["repo_id"], {"revision": HUB["revision"], "split": "train", "token": secret})]
    assert manifest["revision"] == HUB["revision"] and manifest["files"][0]["rows"] == 120
    assert pd.read_parquet(tmp_path / "raw" / "train.parquet").shape[0] == 120
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    for path in (tmp_path / "raw").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def _revision_not_found(revision: str):
    import httpx2 as httpx  # what huggingface_hub 2.x builds its errors on
    from huggingface_hub.errors import RevisionNotFoundError

    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/datasets/x"))
    return RevisionNotFoundError(f"404 Client Error. Revision Not Found for url {revision}", response=response)


@pytest.mark.parametrize("wrapped", [False, True], ids=["raw", "as-datasets-raises-it"])
def test_hub_revision_that_does_not_exist(tmp_path, monkeypatch, wrapped):
    import datasets

    def fake_load_dataset(repo_id, revision=None, **kwargs):
        cause = _revision_not_found(revision)
        if not wrapped:
            raise cause
        # what datasets.load_dataset does with the Hub's error
        raise datasets.exceptions.DatasetNotFoundError(
            f"Revision '{revision}' doesn't exist for dataset '{repo_id}' on the Hub.") from cause

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(HatetuneError) as err:
        sources.fetch({**HUB, "revision": "deadbeef"}, tmp_path / "raw")
    assert str(err.value) == ("field 'task.source.revision': revision deadbeef does not exist for "
                              "ucberkeley-dlab/measuring-hate-speech")
    assert not (tmp_path / "raw").exists()


def test_hub_from_the_mirror_never_calls_the_hub(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub was called"))
    src = write_mhs(tmp_path / "mirror" / "measuring-hate-speech" / "data" / "train.parquet")
    manifest = sources.fetch(HUB, tmp_path / "raw", mirror=tmp_path / "mirror")
    assert [f["path"] for f in manifest["files"]] == ["data/train.parquet"]
    assert manifest["files"][0]["rows"] == 120
    assert (tmp_path / "raw" / "data" / "train.parquet").read_bytes() == src.read_bytes()


# ---------------------------------------------------------------------------------------------- stage
def test_download_stage_checksum_mismatch_exits_non_zero_with_one_line(server, tmp_path, monkeypatch, capsys):
    from stages import download

    server.body = CONTENT
    server.plan["/data.csv"] = [200]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HATETUNE_MIRROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        download.main(["--params", str(ROOT / "params.yaml"), f"task.source.url={server.url('/data.csv')}",
                       "task.source.sha256=" + "a" * 64, "download.retries=0"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "checksum mismatch" in err and "a" * 64 in err
    assert not (tmp_path / "data" / "raw" / "dynahate").exists()


def test_download_stage_from_a_mirror(tmp_path, monkeypatch):
    from stages import download

    write_dynahate(tmp_path / "mirror" / "dynahate" / "dynahate_v0.2.2_dev.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HATETUNE_MIRROR", str(tmp_path / "mirror"))
    assert download.main(["--params", str(ROOT / "params.yaml")]) == 0
    manifest = json.loads((tmp_path / "data" / "raw" / "dynahate" / "manifest.json").read_text())
    assert manifest["mirror"] is True and manifest["files"][0]["rows"] == 48
