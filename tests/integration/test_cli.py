"""Command line: check-config, --version, bare ``mcrouter`` = ``mcrouter run``,
and operator mistakes ending in one line on stderr with exit status 2."""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import HOST, REPO, Client, free_ipv6_port, free_port, wait_port, wait_until
from support.cli import MCROUTER, assert_one_line_error, run_cli, write

VALID = """
orderedPool: [127.0.0.1:11211, "127.0.0.1:11212"]
route:
  type: OperationSelectorRoute
  operationPolicies: {get: MissFailoverRoute, set: AllFastestRoute, version: LocalRoute}
"""


def test_check_config_valid(tmp_path):
    cfg = write(tmp_path, VALID)
    proc = run_cli("check-config", "-f", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{cfg}: ok (OperationSelectorRoute, 2 host(s))\n".encode()
    assert proc.stderr == b""


@pytest.mark.parametrize("text", [
    "orderedPool: [127.0.0.1:11211]\nroute: {type: DefaultRoute}\n",
    "orderedPool:\n  - 127.0.0.1:11211\n  - '[::1]:11212'\nroute:\n  type: MissFailoverRoute\n",
    "orderedPool: []\nroute: {type: LocalRoute}\n",
    "orderedPool: [127.0.0.1:1]\nroute:\n  type: OperationSelectorRoute\n"
    "  operationPolicies: {mg: DefaultRoute, ms: AllFastestRoute, md: LocalRoute, "
    "ma: MissFailoverRoute, gats: MissFailoverRoute, flush_all: AllFastestRoute}\n",
], ids=["default", "ipv6-block-list", "local-no-hosts", "meta-policies"])
def test_check_config_other_valid(tmp_path, text):
    cfg = write(tmp_path, text)
    proc = run_cli("check-config", "-f", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{cfg}: ok (".encode())


# (config text, line, column) of the offending token, 1-based
INVALID = {
    "unknown-top-key": ("""
        orderedPool: [127.0.0.1:11211]
        route:
          type: DefaultRoute
        bogus: 1
        """, 4, 1),
    "unknown-route-key": ("""
        orderedPool: [127.0.0.1:11211]
        route:
          type: DefaultRoute
          timeout: 5
        """, 4, 3),
    "unknown-route-type": ("""
        orderedPool: [127.0.0.1:11211]
        route:
          type: FancyRoute
        """, 3, 9),
    "unknown-command": ("""
        orderedPool: [127.0.0.1:11211]
        route:
          type: OperationSelectorRoute
          operationPolicies:
            get: MissFailoverRoute
            frobnicate: DefaultRoute
        """, 6, 5),
    "quit-is-not-routable": ("""
        orderedPool: [127.0.0.1:11211]
        route:
          type: OperationSelectorRoute
          operationPolicies: {quit: DefaultRoute}
        """, 4, 29),
    "unknown-policy": ("""
        orderedPool: [127.0.0.1:11211]
        route:
          type: OperationSelectorRoute
          operationPolicies:
            get: FailoverRoute
        """, 5, 10),
    "bad-host-port": ("""
        orderedPool:
          - 127.0.0.1:11211
          - nohostport
        route:
          type: DefaultRoute
        """, 3, 5),
    "port-out-of-range": ("""
        orderedPool: [127.0.0.1:11211, 127.0.0.1:99999]
        route: {type: DefaultRoute}
        """, 1, 32),
    "empty-pool": ("""
        orderedPool: []
        route: {type: DefaultRoute}
        """, 1, 14),
    "policies-on-non-selector": ("""
        orderedPool: [127.0.0.1:11211]
        route:
          type: DefaultRoute
          operationPolicies: {get: LocalRoute}
        """, 4, 3),
    "duplicate-key": ("""
        orderedPool: [127.0.0.1:11211]
        route: {type: DefaultRoute}
        route: {type: LocalRoute}
        """, 3, 1),
    "yaml-syntax": ("""
        orderedPool: [127.0.0.1:11211
        route: {type: DefaultRoute}
        """, None, None),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_check_config_invalid(tmp_path, name):
    text, line, col = INVALID[name]
    cfg = write(tmp_path, text)
    proc = run_cli("check-config", "-f", str(cfg))
    if line is None:
        msg = assert_one_line_error(proc, f"{cfg}:")
        assert re.search(re.escape(str(cfg)) + r":\d+:\d+: ", msg), msg
    else:
        assert_one_line_error(proc, f"{cfg}:{line}:{col}:")


def test_check_config_missing_file(tmp_path):
    proc = run_cli("check-config", "-f", str(tmp_path / "nope.yaml"))
    assert_one_line_error(proc, str(tmp_path / "nope.yaml"))


def test_run_with_invalid_config_is_one_line(tmp_path):
    text, line, col = INVALID["unknown-route-type"]
    cfg = write(tmp_path, text)
    proc = run_cli("run", "-f", str(cfg), "-l", f"{HOST}:{free_port()}")
    assert_one_line_error(proc, f"{cfg}:{line}:{col}:")


@pytest.mark.parametrize("args", [
    ["-n", "0"], ["-r", "0"], ["-C", "0"], ["-l", "nonsense"], ["--log-level", "loud"],
    ["--max-item-size", "huge"], ["-H", "often"], ["-t", "0s"], ["--connect-timeout-ms", "0"],
    ["-L", "nonsense"], ["-L", "unix:///tmp/metrics.sock"], ["--log-format", "xml"],
    ["--body-budget", "lots"], ["--reply-budget", "lots"],
], ids=["workers0", "timeout0", "conns0", "listen", "log-level", "item-size", "healthcheck",
        "dns-ttl", "connect-timeout", "metrics-addr", "metrics-unix", "log-format",
        "body-budget", "reply-budget"])
def test_run_bad_flags_are_one_line(tmp_path, args):
    cfg = write(tmp_path, "orderedPool: []\nroute: {type: LocalRoute}\n")
    if "-l" not in args:
        args = args + ["-l", f"{HOST}:{free_port()}"]
    proc = run_cli("run", "-f", str(cfg), *args)
    assert_one_line_error(proc, None)


@pytest.mark.parametrize("flag, what", [("-l", ""), ("-L", " for metrics")],
                         ids=["listen", "metrics"])
def test_a_port_in_use_is_one_line(tmp_path, flag, what):
    cfg = write(tmp_path, "orderedPool: []\nroute: {type: LocalRoute}\n")
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(1)
        held = f"{HOST}:{s.getsockname()[1]}"
        flags = {"-l": f"{HOST}:{free_port()}", "-L": "off", flag: held}
        proc = run_cli("run", "-f", str(cfg), *[x for kv in flags.items() for x in kv])
    line = assert_one_line_error(proc, f"cannot listen on {held}{what}")
    assert f"choose another address with {flag}" in line


def test_log_format_json_is_one_object_per_line(tmp_path):
    cfg = write(tmp_path, "orderedPool: []\nroute: {type: LocalRoute}\n")
    err = tmp_path / "stderr"
    port = free_port()
    with running(["-f", str(cfg), "-l", f"{HOST}:{port}", "--log-format", "json"], err) as proc:
        assert wait_port(port, proc), err.read_text()
        # the port is bound before the signal handlers are: wait for the master's line
        assert wait_until(lambda: "listening on" in err.read_text(), 10), err.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, err.read_text()
    entries = [json.loads(line) for line in err.read_text().splitlines()]
    assert entries and all(e["level"] in ("info", "warning") and e["pid"] and e["message"]
                           for e in entries)
    assert any(e["message"].startswith("listening on") for e in entries)


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout == b"mcrouter 0.1.0\n"
    assert proc.stderr == b""
    proc = run_cli("version")
    assert proc.returncode == 0 and proc.stdout == b"mcrouter 0.1.0\n"


@pytest.mark.skipif(shutil.which("mcrouter") is None, reason="the mcrouter console script is not installed")
def test_console_script_version():
    proc = subprocess.run(["mcrouter", "--version"], capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == b"mcrouter 0.1.0\n"


@pytest.mark.parametrize("subcommand", [[], ["run"]], ids=["bare", "run"])
def test_bare_command_runs_the_router(tmp_path, memcached, subcommand):
    m = memcached()
    cfg = write(tmp_path, f"""
        orderedPool: [{m.addr}]
        route:
          type: OperationSelectorRoute
          operationPolicies: {{version: LocalRoute}}
        """)
    port = free_port()
    err = tmp_path / "stderr"
    with running([*subcommand, "-f", str(cfg), "-l", f"{HOST}:{port}", "-n", "1"], err) as proc:
        assert wait_port(port, proc), f"router did not start: {err.read_text()}"
        with Client(port) as c:
            exp = b"VERSION 1.6.18\r\n"
            assert c.request(b"version\r\n", exp) == exp
            exp = b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
            assert c.request(b"set k 0 0 1\r\nv\r\nget k\r\n", exp) == exp
        assert m.get_raw("k") == b"VALUE k 0 1\r\nv\r\nEND\r\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, err.read_text()


@contextlib.contextmanager
def running(args: list[str], err: Path):
    """The router as a real process (output to ``err``), killed if a test leaves it running."""
    with open(err, "wb") as errf:
        proc = subprocess.Popen([*MCROUTER, *args], stdin=subprocess.DEVNULL, stdout=errf,
                                stderr=errf, cwd=str(REPO))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _serve_version(tmp_path, memcached, listen: str, connect) -> None:
    m = memcached()
    cfg = write(tmp_path, f"orderedPool: [{m.addr}]\nroute: {{type: DefaultRoute}}\n")
    err = tmp_path / "stderr"
    with running(["-f", str(cfg), "-l", listen, "-n", "2"], err) as proc:
        deadline = time.monotonic() + 10
        sock = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                sock = connect()
                break
            except OSError:
                time.sleep(0.05)
        assert sock is not None, f"router did not start on {listen}: {err.read_text()}"
        with sock:
            sock.settimeout(10)
            sock.sendall(b"set k 0 0 1\r\nv\r\nget k\r\n")
            exp = b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
            got = b""
            while len(got) < len(exp):
                data = sock.recv(4096)
                if not data:
                    break
                got += data
            assert got == exp
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, err.read_text()


def test_listen_unix_socket(tmp_path, memcached):
    path = tmp_path / "mcr.sock"

    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
        except OSError:
            s.close()
            raise
        return s

    _serve_version(tmp_path, memcached, f"unix://{path}", connect)
    assert not path.exists(), "the unix socket file is left behind after a graceful stop"


def test_listen_ipv6_loopback(tmp_path, memcached):
    port = free_ipv6_port()
    _serve_version(tmp_path, memcached, f"[::1]:{port}",
                   lambda: socket.create_connection(("::1", port), timeout=1))
