"""Bad data never reaches training: each case ends with one `crash:` line that names the file
and the fix, and leaves nothing half-written in the cache.

The enwik8 checksum path is exercised on a small fake "enwik8": a test copy of prepare.py gets
its ENWIK8_SIZE, ENWIK8_MD5 and SPLITS constants rewritten to match the fake (a test-side edit;
prepare.py itself has no test hook), next to a tiny train.py copy that imports it. Each copy's
directory has no x-transformers submodule. Downloads come from a loopback HTTP server, never the
internet.
"""

import contextlib
import hashlib
import http.server
import io
import re
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from harness import (
    assert_crashed,
    base_env,
    crash_reason,
    leftover_parts,
    make_prepare_copy,
    make_train_copy,
    parse_summary,
    python,
    run_train,
    write_corpus,
)

FAKE_SIZE = 50_000


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def assert_refused(code, log):
    """A data fault stops the run like any crash, and says so in one line, not a traceback."""
    assert_crashed(code, log)
    assert "Traceback" not in log, f"a data error should be one line, not a traceback:\n{log}"


@pytest.fixture(scope="module")
def fake_blob(tmp_path_factory):
    """The bytes of a small fake enwik8 (generated text)."""
    return write_corpus(tmp_path_factory.mktemp("fake") / "enwik8", size=FAKE_SIZE, seed=7).read_bytes()


def harness_copy(workdir, **constants):
    """prepare.py (with `constants` rewritten) and a tiny train.py side by side in `workdir`;
    returns the prepare.py copy. Its directory has no x-transformers submodule."""
    make_train_copy(workdir)
    return make_prepare_copy(workdir, **constants)


def enwik8_copy(workdir, blob):
    """A harness copy whose enwik8 constants describe `blob` instead of the real 100 MB file."""
    n = len(blob)
    splits = {"train": (0, n * 9 // 10), "val": (n * 9 // 10, n * 19 // 20), "test": (n * 19 // 20, n)}
    return harness_copy(workdir, ENWIK8_SIZE=n, ENWIK8_MD5=hashlib.md5(blob).hexdigest(), SPLITS=splits)


def zip_of(blob):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", blob)
    return buffer.getvalue()


def cache_of(workdir):
    return Path(workdir) / "cache" / "autoresearch-xt"


def prepare(prepare_py, env):
    """`python prepare.py > run.log 2>&1` in the copy's directory: (exit code, log)."""
    return run_train(prepare_py, env, timeout=120)


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves server.body; may declare a longer Content-Length than it sends, or stall."""

    def do_GET(self):
        server = self.server
        server.requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(server.declared_length or len(server.body)))
        self.end_headers()
        self.wfile.write(server.body)
        self.wfile.flush()
        if server.stall:  # hold the connection open mid-body until the test is done
            server.release.wait(60)
        self.close_connection = True

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving_mirror():
    """A loopback HTTP server on a free port; set .body, .declared_length, .stall to shape it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
    server.daemon_threads = True
    server.body, server.declared_length, server.stall, server.requests = b"", None, False, 0
    server.release = threading.Event()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/enwik8.zip"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror():
    with serving_mirror() as server:
        yield server


# ---------------------------------------------------------------------------
# Missing data
# ---------------------------------------------------------------------------


def test_missing_data_offline_says_every_way_to_get_it(tmp_path):
    prepare_py = harness_copy(tmp_path / "repo")  # the copy has no x-transformers/data submodule
    code, log = prepare(prepare_py, base_env(tmp_path))
    assert_refused(code, log)
    reason = crash_reason(log)
    assert "could not download http://127.0.0.1:9/enwik8.zip" in reason
    for way in ("AR_DATA=", "git submodule update", str(cache_of(tmp_path)), "python prepare.py"):
        assert way in reason, f"the error should mention {way!r}: {reason}"
    assert not (cache_of(tmp_path) / "enwik8").exists()
    assert leftover_parts(tmp_path) == []


def test_ar_data_pointing_nowhere_is_named(tmp_path):
    prepare_py = harness_copy(tmp_path / "repo")
    missing = tmp_path / "no-such-dir" / "enwik8"
    code, log = prepare(prepare_py, base_env(tmp_path, AR_DATA=missing))
    assert_refused(code, log)
    assert str(missing) in crash_reason(log) and "does not exist" in crash_reason(log)


def test_a_custom_corpus_too_small_to_split_is_refused(tmp_path):
    prepare_py = harness_copy(tmp_path / "repo")
    small = write_corpus(tmp_path / "small.txt", size=5_000)
    code, log = prepare(prepare_py, base_env(tmp_path, AR_DATA=small))
    assert_refused(code, log)
    assert str(small) in crash_reason(log) and "5,000 bytes" in crash_reason(log)


# ---------------------------------------------------------------------------
# Damaged enwik8: the checksum catches it
# ---------------------------------------------------------------------------


def truncated(blob):
    return blob[: len(blob) - 1000]


def one_byte_flipped(blob):
    middle = len(blob) // 2
    return blob[:middle] + bytes([blob[middle] ^ 0x01]) + blob[middle + 1 :]


def too_long(blob):
    return blob + b"<extra/>"


@pytest.mark.parametrize("damage", [truncated, one_byte_flipped, too_long])
def test_a_damaged_enwik8_is_refused_with_its_path_and_the_fix(tmp_path, fake_blob, damage):
    prepare_py = enwik8_copy(tmp_path / "repo", fake_blob)
    bad = tmp_path / "data" / "enwik8"
    bad.parent.mkdir()
    bad.write_bytes(damage(fake_blob))
    code, log = prepare(prepare_py, base_env(tmp_path, AR_DATA=bad))
    assert_refused(code, log)
    reason = crash_reason(log)
    assert str(bad) in reason and "not enwik8" in reason
    assert f"{len(damage(fake_blob)):,} bytes" in reason
    assert "delete it and fetch it again" in reason
    assert not (cache_of(tmp_path) / "verified.json").exists(), "a failed check must not be remembered"


def test_a_damaged_enwik8_never_starts_training(tmp_path, fake_blob):
    train_py = enwik8_copy(tmp_path / "repo", fake_blob).with_name("train.py")  # imports the copy
    bad = tmp_path / "data" / "enwik8"
    bad.parent.mkdir()
    bad.write_bytes(one_byte_flipped(fake_blob))
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=bad, AR_STEPS=2, AR_EVAL_BYTES=4096))
    assert_refused(code, log)
    assert "not enwik8" in crash_reason(log)
    assert not re.search(r"^step ", log, flags=re.M)
    workdir = train_py.parent
    assert not (workdir / "metrics.jsonl").exists() and not (workdir / "checkpoint.pt").exists()


# ---------------------------------------------------------------------------
# Wrong kind of file
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["AR_DATA", "cache"])
def test_a_directory_where_the_data_file_should_be_is_named(tmp_path, where):
    prepare_py = harness_copy(tmp_path / "repo")
    if where == "AR_DATA":
        directory, env = tmp_path / "enwik8", {"AR_DATA": tmp_path / "enwik8"}
    else:
        directory, env = cache_of(tmp_path) / "enwik8", {}
    directory.mkdir(parents=True)
    code, log = prepare(prepare_py, base_env(tmp_path, **env))
    assert_refused(code, log)
    assert f"{directory} is a directory" in crash_reason(log)


@pytest.mark.parametrize(
    "name, content",
    [
        ("enwik8.gz", b"plain text, never gzipped\n" * 100),
        ("enwik8.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 6),  # a gzip header and nothing after it
        ("enwik8.zip", b"not a zip archive\n" * 100),
    ],
    ids=["gz-not-gzip", "gz-truncated", "zip-not-zip"],
)
def test_a_compressed_file_that_does_not_decompress_is_called_damaged(tmp_path, name, content):
    prepare_py = harness_copy(tmp_path / "repo")
    bad = tmp_path / "data" / name
    bad.parent.mkdir()
    bad.write_bytes(content)
    code, log = prepare(prepare_py, base_env(tmp_path, AR_DATA=bad))
    assert_refused(code, log)
    reason = crash_reason(log)
    assert f"cannot read {bad}" in reason and "delete it and fetch it again" in reason


# ---------------------------------------------------------------------------
# Downloads: partial files, cut-short transfers, kills, remembered verification
# ---------------------------------------------------------------------------


def stale_part(workdir):
    """A half-finished download left by a process that died long ago."""
    part = cache_of(workdir) / "enwik8.zip.part123"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PK\x03\x04 half of an archive")
    return part


def test_a_stale_partial_download_is_not_taken_for_the_data_when_offline(tmp_path, fake_blob):
    prepare_py = enwik8_copy(tmp_path / "repo", fake_blob)
    stale_part(tmp_path)
    code, log = prepare(prepare_py, base_env(tmp_path))
    assert_refused(code, log)
    assert "could not download" in crash_reason(log)
    assert not (cache_of(tmp_path) / "enwik8").exists()
    assert not (cache_of(tmp_path) / "enwik8.zip").exists()


def test_a_stale_partial_download_is_fetched_again_when_the_mirror_is_up(tmp_path, fake_blob, mirror):
    prepare_py = enwik8_copy(tmp_path / "repo", fake_blob)
    stale_part(tmp_path)
    mirror.body = zip_of(fake_blob)
    code, log = prepare(prepare_py, base_env(tmp_path, AR_DATA_URL=mirror.url))
    assert code == 0, log
    assert mirror.requests == 1
    cached = cache_of(tmp_path) / "enwik8"
    assert f"data ready: {cached}" in log
    assert cached.read_bytes() == fake_blob
    assert not (cache_of(tmp_path) / "enwik8.zip").exists(), "the archive is removed once unpacked"


def test_a_download_cut_short_is_reported_and_leaves_nothing_cached(tmp_path, fake_blob, mirror):
    prepare_py = enwik8_copy(tmp_path / "repo", fake_blob)
    archive = zip_of(fake_blob)
    mirror.body, mirror.declared_length = archive[: len(archive) // 2], len(archive)
    code, log = prepare(prepare_py, base_env(tmp_path, AR_DATA_URL=mirror.url))
    assert_refused(code, log)
    reason = crash_reason(log)
    assert mirror.url in reason and "cut short" in reason and "run again" in reason
    cache = cache_of(tmp_path)
    assert not (cache / "enwik8.zip").exists() and not (cache / "enwik8").exists()
    assert leftover_parts(tmp_path) == []


def wait_for(condition, proc, seconds=60):
    deadline = time.time() + seconds
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.fixture(scope="module", params=[signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def killed_download(request, tmp_path_factory, fake_blob):
    """A `python prepare.py` run signalled while its download stalls mid-body, the partial file on disk
    and the progress bar drawn: (signal, exit code, log, workdir). The stalled download never ends by
    itself, so an exit is the signal's doing."""
    workdir = tmp_path_factory.mktemp("killed_download")
    prepare_py = enwik8_copy(workdir / "repo", fake_blob)
    archive = zip_of(fake_blob)
    log_path = prepare_py.parent / "run.log"
    with serving_mirror() as server, open(log_path, "w") as log_file:
        server.body, server.declared_length, server.stall = archive[:1000], len(archive), True
        proc = subprocess.Popen(
            [python(), str(prepare_py)],
            cwd=prepare_py.parent,
            env=base_env(workdir, AR_DATA_URL=server.url),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            started = wait_for(lambda: leftover_parts(cache_of(workdir)) and "%|" in log_path.read_text(), proc)
            assert started, "the download never started:\n" + log_path.read_text()
            proc.send_signal(request.param)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return request.param, code, log_path.read_text(), workdir


def test_a_download_killed_midway_exits_promptly_and_removes_its_partial_file(killed_download):
    signum, code, log, workdir = killed_download
    assert code == 128 + signum
    assert f"crash: interrupted ({signal.Signals(signum).name})" in log
    assert parse_summary(log) == {}
    assert leftover_parts(workdir) == []
    assert not (cache_of(workdir) / "enwik8.zip").exists()


def test_a_download_killed_midway_puts_its_crash_line_on_a_line_of_its_own(killed_download):
    _, _, log, _ = killed_download
    assert re.search(r"^crash: interrupted", log, flags=re.M), log


def test_verification_is_remembered_until_the_file_changes(tmp_path, fake_blob):
    prepare_py = enwik8_copy(tmp_path / "repo", fake_blob)
    data = tmp_path / "data" / "enwik8"
    data.parent.mkdir()
    data.write_bytes(fake_blob)
    env = base_env(tmp_path, AR_DATA=data)
    stamp_file = cache_of(tmp_path) / "verified.json"

    code, log = prepare(prepare_py, env)  # the intact fake passes: the refusals above are about damage
    assert code == 0, log
    assert f"data ready: {data} (enwik8:" in log
    assert str(data.resolve()) in stamp_file.read_text()
    first = stamp_file.stat()

    code, log = prepare(prepare_py, env)  # a verified file is not hashed again: the stamp is untouched
    assert code == 0, log
    second = stamp_file.stat()
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    data.write_bytes(one_byte_flipped(fake_blob))  # same size, new mtime: the stamp no longer vouches
    code, log = prepare(prepare_py, env)
    assert_refused(code, log)
    assert "not enwik8" in crash_reason(log)
