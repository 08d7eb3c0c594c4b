"""Finding, downloading and verifying the data, in-process on small stand-ins for enwik8.

The real enwik8 is 100 MB and cannot be fetched here, so these tests shrink prepare's size,
checksum and split constants (monkeypatched for the test) to a generated "enwik8"."""

import hashlib
import http.server
import io
import threading
import zipfile

import pytest
from harness import base_env, make_train_copy, run_prepare, run_train, write_corpus

import prepare

FAKE_SIZE = 60_000


@pytest.fixture
def fake_enwik8(tmp_path):
    (tmp_path / "source").mkdir()
    return write_corpus(tmp_path / "source" / "enwik8", size=FAKE_SIZE, seed=3)


@pytest.fixture
def train(monkeypatch, tmp_path, fake_enwik8):
    """prepare, taking `fake_enwik8` for the real thing, with a private cache (undone after the test)."""
    module = prepare
    blob = fake_enwik8.read_bytes()
    monkeypatch.setattr(module, "ENWIK8_SIZE", len(blob))
    monkeypatch.setattr(module, "ENWIK8_MD5", hashlib.md5(blob).hexdigest())
    monkeypatch.setattr(module, "SPLITS", {"train": (0, 50_000), "val": (50_000, 55_000), "test": (55_000, 60_000)})
    monkeypatch.setattr(module, "REPO_DIR", tmp_path / "repo")  # no submodule copy unless a test makes one
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return module


def env_for(**values):
    env = dict(data="", data_url="http://127.0.0.1:9/enwik8.zip")
    env.update(values)
    return env


def zipped(path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(path, "enwik8")
    return buffer.getvalue()


def test_enwik8_named_file_with_the_right_checksum_is_split_90_5_5(train, fake_enwik8):
    splits, identity, path = train.load_corpus(env_for(data=str(fake_enwik8)))
    assert identity == f"enwik8:{train.ENWIK8_MD5}"
    assert [len(splits[k]) for k in ("train", "val", "test")] == [50_000, 5_000, 5_000]
    assert bytes(splits["val"][:10].tolist()) == fake_enwik8.read_bytes()[50_000:50_010]


def test_enwik8_named_file_with_a_wrong_checksum_is_refused(train, fake_enwik8, tmp_path):
    bad = tmp_path / "bad" / "enwik8"
    bad.parent.mkdir()
    blob = bytearray(fake_enwik8.read_bytes())
    blob[123] ^= 1
    bad.write_bytes(bytes(blob))
    with pytest.raises(train.HarnessError, match=f"{bad}.*expected.*{train.ENWIK8_MD5}"):
        train.load_corpus(env_for(data=str(bad)))


def test_gz_and_zip_copies_decompress_to_the_same_bytes(train, fake_enwik8, tmp_path):
    import gzip

    gz = tmp_path / "enwik8.gz"
    gz.write_bytes(gzip.compress(fake_enwik8.read_bytes()))
    zp = tmp_path / "enwik8.zip"
    zp.write_bytes(zipped(fake_enwik8))
    raw = train.load_corpus(env_for(data=str(fake_enwik8)))[0]["train"]
    for path in (gz, zp):
        assert train.load_corpus(env_for(data=str(path)))[0]["train"].equal(raw)


def test_any_other_file_is_a_custom_corpus_split_by_proportion(train, tmp_path, capsys):
    custom = write_corpus(tmp_path / "notes.txt", size=100_000)
    splits, identity, _ = train.load_corpus(env_for(data=str(custom)))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [90_000, 5_000, 5_000]
    assert identity.startswith("custom:")
    assert "not comparable" in capsys.readouterr().out


def test_submodule_copy_comes_before_the_cache(train, fake_enwik8):
    import gzip

    submodule = train.REPO_DIR / "x-transformers" / "data" / "enwik8.gz"
    submodule.parent.mkdir(parents=True)
    submodule.write_bytes(gzip.compress(fake_enwik8.read_bytes()))
    (train.cache_dir()).mkdir(parents=True)
    (train.cache_dir() / "enwik8").write_bytes(b"not used")
    assert train.locate_data(env_for()) == (submodule, True)


def test_download_from_a_file_url_lands_in_the_cache_once_verified(train, fake_enwik8, tmp_path, monkeypatch):
    archive = tmp_path / "mirror" / "enwik8.zip"
    archive.parent.mkdir()
    archive.write_bytes(zipped(fake_enwik8))
    splits, identity, path = train.load_corpus(env_for(data_url=archive.as_uri()))
    assert path == train.cache_dir() / "enwik8"
    assert path.read_bytes() == fake_enwik8.read_bytes()
    assert sorted(p.name for p in train.cache_dir().iterdir()) == ["enwik8", "verified.json"]

    # the verification is remembered: the second load does not hash 100 MB again
    def no_hashing(*args):
        raise AssertionError("re-hashed a verified file")

    monkeypatch.setattr(train.hashlib, "md5", no_hashing)
    assert train.load_corpus(env_for())[1] == identity


class ZipHandler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


def test_download_from_a_loopback_http_server(train, fake_enwik8):
    handler = type("Handler", (ZipHandler,), {"payload": zipped(fake_enwik8)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/enwik8.zip"
        splits, identity, path = train.load_corpus(env_for(data_url=url))
    finally:
        server.shutdown()
    assert identity.startswith("enwik8:")
    assert path.read_bytes() == fake_enwik8.read_bytes()


def test_prepare_py_verifies_the_data_without_training(tmp_path, corpus):
    code, out, err = run_prepare([], base_env(tmp_path, AR_DATA=corpus), cwd=tmp_path)
    assert code == 0, out + err
    assert "data ready" in out and "step" not in out + err
    assert not (tmp_path / "metrics.jsonl").exists()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_train_py_no_longer_takes_the_data_flag_and_names_its_replacement(tmp_path, corpus):
    train_py = make_train_copy(tmp_path)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus), args=["--prepare-data"])
    assert code != 0
    last = log.rstrip("\n").splitlines()[-1]
    assert last.startswith("crash: unknown arguments ['--prepare-data']") and "python prepare.py" in last


def test_prepare_py_refuses_unknown_arguments(tmp_path):
    code, out, _ = run_prepare(["--force"], base_env(tmp_path), cwd=tmp_path)
    assert code != 0
    assert out.strip().splitlines() == [
        "crash: unknown arguments ['--force']: prepare.py takes none, or score CHECKPOINT"
    ]
