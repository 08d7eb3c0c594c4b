"""A warm `python` for the tests: the same interpreter and libraries, without paying torch's import per process.

Every test run of `python train.py` (and of `decide`'s re-score) spends about 4 s of this machine's
CPU importing torch and x-transformers before it does a second of work; the scripted night starts
about forty such processes. `serve()` imports those libraries once, then forks a child per request;
`shim()` writes a small `python` executable that sends its argv, cwd, environment and standard file
descriptors to the server and waits for the child's exit status, so a command string runs as
written (`timeout -k 30 600 python train.py > run.log 2>&1`) and `sys.executable` in the child is
the shim, so its own subprocesses (the re-score, the workers' runs) are warm as well.

What a cold interpreter would do differently, and what the server does about it:
* sys.path: rebuilt from the child's script directory, its PYTHONPATH (unless -I) and the
  interpreter's own entries (without site-packages under -S); a child whose path would resolve a preloaded library to another file
  (a test's shadowed copy) is exec'd as a cold interpreter instead, as is any option but -I/-S/-c/-u.
* signals: the shim forwards SIGTERM, SIGINT and SIGHUP to the child's process group; when the
  shim dies (SIGKILL of its group, a test's timeout) the server kills that group at once.
* exit status: a child killed by a signal makes the shim kill itself with the same signal.
Nothing of the product (prepare, train, labbook) is imported before the fork.
"""

import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ("numpy", "torch", "torch._dynamo", "einx", "x_transformers", "adam_atan2_pytorch")

SHIM = """\
#!{python} -S
import json, os, signal, socket, struct, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect({address!r})
fds = []
for name in os.listdir("/proc/self/fd"):  # every descriptor this process holds, at its number (pass_fds too)
    try:
        os.fstat(int(name))
        fds.append(int(name))
    except OSError:  # the listing's own descriptor, closed by now
        pass
fds = [fd for fd in fds if fd != sock.fileno()]
request = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ), "fds": fds}}).encode()
socket.send_fds(sock, [struct.pack("!I", len(request)) + request], fds)
child = struct.unpack("!i", sock.recv(4))[0]
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda n, _: os.killpg(child, n))
status = b""
while len(status) < 4:
    part = sock.recv(4 - len(status))
    if not part:
        sys.exit(1)
    status += part
code = struct.unpack("!i", status)[0]
if code < 0:
    if -code != signal.SIGKILL:
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def shim(directory, address):
    """Write `python` and `python3` executables into `directory` that run through the server at `address`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = SHIM.format(python=sys.executable, address=str(address))
    for name in ("python", "python3"):
        path = directory / name
        path.write_text(text)
        path.chmod(0o755)
    return directory / "python"


def start(directory, env):
    """Start a server under `directory` with `env` (OMP_NUM_THREADS and the like are read once, here);
    returns (process, path of the `python` shim). The caller terminates the process."""
    address = Path(directory) / "server.sock"
    if len(str(address)) > 100:  # a Unix socket's path has about 107 bytes
        address = Path(tempfile.mkdtemp(prefix="warm")) / "server.sock"
    server = subprocess.Popen(
        [sys.executable, "-I", __file__, str(address), str(Path(directory) / "bin" / "python")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout.readline().strip() == "ready", "the warm python server did not start"
    return server, shim(Path(directory) / "bin", address)


def receive(connection):
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 64)
    size = struct.unpack("!I", message[:4])[0]
    while len(message) < 4 + size:
        part = connection.recv(1 << 20)
        if not part:
            raise ConnectionError("the shim went away mid-request")
        message += part
    return json.loads(message[4 : 4 + size]), fds


def child_path(request, isolated, base, no_site=False):
    argv = request["argv"]
    if isolated:
        script_dir = []
    elif argv[0] == "-c":
        script_dir = [""]  # python -c: the current directory, as the empty string
    else:
        script_dir = [str(Path(request["cwd"], argv[0]).parent.resolve())]
    extra = [] if isolated else [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    if no_site:  # python -S: the standard library only, no site-packages
        base = [p for p in base if "site-packages" not in p and "dist-packages" not in p]
    return script_dir + [str(Path(request["cwd"], p)) for p in extra] + base


def shadowed(path):
    """Whether `path` would find any preloaded library somewhere else than where it was loaded from."""
    from importlib.machinery import PathFinder

    for name in {n.split(".")[0] for n in PRELOAD}:
        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.origin != sys.modules[name].__file__:
            return True
    return False


def run_child(request, fds, python, base):
    """In the forked child: become the requested interpreter run, then exit with its status."""
    os.setpgid(0, 0)
    import fcntl

    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in fds]  # out of the way of every target number
    for fd in fds:
        os.close(fd)
    for target, fd in zip(request.get("fds", range(3)), high):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import tempfile

    tempfile.tempdir = None  # found again from this run's TMPDIR, as a fresh interpreter would
    argv = list(request["argv"])
    options = []
    while argv and argv[0] in ("-I", "-S", "-u"):
        options.append(argv.pop(0))
    isolated = "-I" in options
    no_site = "-S" in options
    supported = argv and (argv[0] == "-c" and len(argv) > 1 or not argv[0].startswith("-"))
    path = child_path({**request, "argv": argv}, isolated, base, no_site) if supported else []
    if not supported or shadowed(path):
        os.execv(python, [python, *request["argv"]])
    sys.path[:] = path
    sys.argv = argv[1:] if argv[0] == "-c" else argv
    if argv[0] == "-c":
        sys.argv[0] = "-c"
    sys.executable = request["executable"]
    sys.dont_write_bytecode = bool(request["env"].get("PYTHONDONTWRITEBYTECODE"))
    unbuffered = "-u" in options or bool(request["env"].get("PYTHONUNBUFFERED"))

    for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        mode = "r" if fd == 0 else "w"
        stream = open(fd, mode, buffering=1 if mode == "w" else -1, closefd=False, encoding="utf-8", errors=None)
        if mode == "w":
            stream.reconfigure(write_through=unbuffered or fd == 2, errors="backslashreplace" if fd == 2 else None)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    threads = request["env"].get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
    import importlib

    importlib.invalidate_caches()
    code = 0
    try:
        import runpy
        import types

        if argv[0] == "-c":
            main = types.ModuleType("__main__")
            main.__dict__["__builtins__"] = __builtins__
            sys.modules["__main__"] = main
            exec(compile(argv[1], "<string>", "exec"), main.__dict__)
        else:
            runpy.run_path(os.path.abspath(argv[0]), run_name="__main__")  # __file__ absolute, as python does
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException as e:
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from the run's own frames
        code = 1
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def serve(address, executable):
    """Preload the libraries, then fork a child per shim connection until terminated (or orphaned:
    a test session killed outright leaves no server behind)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    base = list(sys.path)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(address))
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children = {}  # pid -> connection
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parent = os.getppid()
    print("ready", flush=True)
    try:
        while os.getppid() == parent:
            for key, _ in selector.select(timeout=0.05):
                if key.fileobj is listener:
                    connection, _ = listener.accept()
                    try:
                        request, fds = receive(connection)
                    except (ConnectionError, OSError, ValueError):
                        connection.close()
                        continue
                    request["executable"] = executable
                    pid = os.fork()
                    if pid == 0:
                        selector.close()
                        listener.close()
                        connection.close()
                        for other in children.values():
                            other.close()
                        try:
                            run_child(request, fds, sys.executable, base)
                        finally:
                            os._exit(70)
                    for fd in fds:
                        os.close(fd)
                    connection.sendall(struct.pack("!i", pid))
                    children[pid] = connection
                    selector.register(connection, selectors.EVENT_READ, pid)
                else:  # the shim's end closed: it died, so its run dies too
                    pid = key.data
                    if key.fileobj.recv(1) == b"":
                        selector.unregister(key.fileobj)
                        kill_group(pid)
            reap(children, selector)
    finally:
        for pid in list(children):
            kill_group(pid)


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def reap(children, selector):
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is None:
            continue
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        try:
            connection.sendall(struct.pack("!i", code))
        except OSError:
            pass
        try:
            selector.unregister(connection)
        except (KeyError, ValueError):
            pass
        connection.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
