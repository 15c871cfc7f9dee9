"""Command line: ``mcrouter run``, ``check-config``, ``route``, ``--version``.

A bare ``mcrouter [flags]`` means ``mcrouter run [flags]``, so gomcrouter
command lines keep working.  Operator mistakes end in one line on stderr and
exit status 2; never a traceback.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Optional

import typer

from mcrouter import __version__
from mcrouter._upstream import HostBase
from mcrouter.config import ConfigError, HostAddr, load_config
from mcrouter.hosttable import DEFAULT_CAPACITY
from mcrouter.listen import ListenAddr, ListenError, parse_listen
from mcrouter.logs import LOG_FORMATS, setup_logging
from mcrouter.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=False,
                  help="mcrouter: a memcached request router.")

LOG_LEVELS = ("debug", "info", "warning", "error")
SUBCOMMANDS = ("run", "check-config", "route", "version", "hosts")
EXIT_USAGE = 2


def _die(message: str) -> None:
    typer.echo(f"mcrouter: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def parse_size(text: str) -> int:
    """``1048576``, ``512k``, ``1m``, ``2MiB`` → bytes (memcached's -I accepts k/m)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)(?:i?[bB])?\s*", text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


def parse_duration(text: str) -> float:
    """``10s``, ``500ms``, ``2m`` or a bare number of seconds → seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]


def parse_metrics_listen(text: str) -> ListenAddr | None:
    """``-L``: ``:9090``, ``host:port``, ``[::1]:port``, or ``off`` for no endpoint."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    try:
        if text.startswith("unix://"):
            raise ListenError(text)         # Prometheus scrapes over TCP
        return parse_listen(text)
    except ListenError:
        raise ListenError(f"-L/--metrics-listen-addr {text!r} is not valid; write :9090, "
                          "host:port, [::1]:port or off") from None


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mcrouter {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback,
                                       is_eager=True, help="Print the version and exit.")) -> None:
    """mcrouter: a memcached request router."""


@app.command()
def run(
    router_config: str = typer.Option("router.yaml", "-f", "--router-config",
                                      help="Route config (YAML)."),
    listen: list[str] = typer.Option(["tcp://:8080"], "-l", "--listen",
                                     help="tcp://[host]:port, host:port, [::1]:port, "
                                          "unix:///path, or tls://[host]:port for TLS clients; "
                                          "repeat -l to listen on several."),
    tls_cert: Optional[str] = typer.Option(None, "--tls-cert",
                                           help="Certificate (PEM, with its chain) of the "
                                                "tls:// listeners; re-read on reload."),
    tls_key: Optional[str] = typer.Option(None, "--tls-key",
                                          help="Private key (PEM) of --tls-cert."),
    tls_client_ca: Optional[str] = typer.Option(None, "--tls-client-ca",
                                                help="Require client certificates signed by "
                                                     "this CA (PEM) on tls:// listeners (mTLS)."),
    tls_client_cert: str = typer.Option("required", "--tls-client-cert",
                                        help="With --tls-client-ca: required (mTLS), or "
                                             "optional (a client may present none; one it "
                                             "presents must be signed by that CA)."),
    tls_handshake_timeout: str = typer.Option("5s", "--tls-handshake-timeout",
                                              help="Close a client that has not finished its "
                                                   "TLS handshake this long after connecting."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    log_format: str = typer.Option("text", "--log-format", help="text or json (one object per line)."),
    metrics_listen_addr: str = typer.Option(
        ":9090", "-L", "--metrics-listen-addr", envvar="MCROUTER_METRICS_LISTEN_ADDR",
        help="Where /metrics is served (:9090, host:port, [::1]:port), or off."),
    server_event_loops: int = typer.Option(1, "-n", "--server-event-loops",
                                           help="Worker processes, one event loop each."),
    upstream_connections: int = typer.Option(2, "-C", "--upstream-connections",
                                             help="Connections per memcached host per worker."),
    timeout_ms: int = typer.Option(1000, "-r", "--timeout-ms",
                                   help="Upstream request timeout in milliseconds."),
    connect_timeout_ms: int = typer.Option(1000, "--connect-timeout-ms",
                                           help="Upstream connect timeout in milliseconds."),
    healthcheck_interval: str = typer.Option("10s", "-H", "--healthcheck-interval",
                                             help="Time between health probes of a host (10s, 500ms)."),
    dns_cache_ttl: str = typer.Option("30s", "-t", "--dns-cache-ttl",
                                      help="Time between DNS lookups of a host name (30s, 5m)."),
    buffer_size: int = typer.Option(1048576, "-b", "--buffer-size",
                                    help="Read size and per-client output bound, in bytes."),
    reuseport: bool = typer.Option(False, "--reuseport",
                                   help="Each worker binds its own SO_REUSEPORT socket."),
    max_item_size: str = typer.Option("1m", "--max-item-size",
                                      help="Largest value accepted (as memcached's -I)."),
    max_conns: int = typer.Option(1024, "-c", "--max-conns",
                                  help="Client connections for the whole router (as memcached's "
                                       "-c), split evenly over the workers."),
    body_budget: str = typer.Option("64m", "--body-budget",
                                    help="Bytes each worker holds for request bodies still "
                                         "arriving; past it: out of memory storing object."),
    reply_budget: str = typer.Option("64m", "--reply-budget",
                                     help="Bytes each worker holds of value replies for clients "
                                          "already past -b; past it: out of memory writing get "
                                          "response."),
    body_timeout: str = typer.Option("5s", "--body-timeout",
                                     help="Close a client stopped mid-line or mid-body this long."),
    idle_timeout: str = typer.Option("0", "--idle-timeout",
                                     help="Close a client idle this long (0: never, as memcached)."),
    graceful_timeout: float = typer.Option(10.0, "--graceful-timeout",
                                           help="Seconds to finish requests in flight on SIGTERM."),
    watch_config: bool = typer.Option(False, "--watch-config",
                                      help="Reload the config when its file changes (as SIGHUP)."),
    confirm_timeout: float = typer.Option(10.0, "--confirm-timeout", hidden=True,
                                          help="Seconds workers have to confirm a config "
                                               "generation (tests shorten it)."),
    host_slots: int = typer.Option(DEFAULT_CAPACITY, "--host-slots", hidden=True,
                                   help="Slots of the shared host table; a config may name at "
                                        "most half of them (tests shrink it)."),
) -> None:
    """Run the router (the default command)."""
    if log_level not in LOG_LEVELS:
        _die(f"--log-level {log_level!r} is not valid; use one of {', '.join(LOG_LEVELS)}")
    if log_format not in LOG_FORMATS:
        _die(f"--log-format {log_format!r} is not valid; use one of {', '.join(LOG_FORMATS)}")
    for flag, value in (("-n/--server-event-loops", server_event_loops),
                        ("-c/--max-conns", max_conns),
                        ("-C/--upstream-connections", upstream_connections),
                        ("-r/--timeout-ms", timeout_ms), ("-b/--buffer-size", buffer_size),
                        ("--connect-timeout-ms", connect_timeout_ms)):
        if value < 1:
            _die(f"{flag} must be at least 1 (got {value})")
    if not 0.1 <= confirm_timeout <= 3600:
        _die(f"--confirm-timeout must be from 0.1 to 3600 seconds (got {confirm_timeout})")
    if not 4 <= host_slots <= 65536:
        _die(f"--host-slots must be from 4 to 65536 (got {host_slots})")
    try:
        item_size = parse_size(max_item_size)
    except ValueError:
        _die(f"--max-item-size {max_item_size!r} is not a size; write e.g. 1048576, 512k or 2m")
    if item_size < 1024:
        _die(f"--max-item-size must be at least 1k (got {max_item_size})")
    try:
        budget = parse_size(body_budget)
    except ValueError:
        _die(f"--body-budget {body_budget!r} is not a size; write e.g. 67108864, 512k or 64m")
    if budget < item_size:
        _die(f"--body-budget must be at least --max-item-size (got {body_budget})")
    try:
        replies = parse_size(reply_budget)
    except ValueError:
        _die(f"--reply-budget {reply_budget!r} is not a size; write e.g. 67108864, 512k or 64m")
    durations = {}
    for flag, text in (("-H/--healthcheck-interval", healthcheck_interval),
                       ("-t/--dns-cache-ttl", dns_cache_ttl)):
        try:
            durations[flag] = parse_duration(text)
        except ValueError:
            _die(f"{flag} {text!r} is not a duration; write e.g. 10s, 500ms or 2m")
        if durations[flag] < 0.01:
            _die(f"{flag} must be at least 10ms (got {text})")
    for flag, text in (("--body-timeout", body_timeout), ("--idle-timeout", idle_timeout),
                       ("--tls-handshake-timeout", tls_handshake_timeout)):
        try:
            durations[flag] = parse_duration(text)
        except ValueError:
            _die(f"{flag} {text!r} is not a duration; write e.g. 5s, 500ms or 2m")
    if durations["--body-timeout"] < 0.1:
        _die(f"--body-timeout must be at least 100ms (got {body_timeout})")
    if durations["--tls-handshake-timeout"] < 0.1:
        _die(f"--tls-handshake-timeout must be at least 100ms (got {tls_handshake_timeout})")
    try:
        addrs = [parse_listen(text) for text in listen]
        metrics_addr = parse_metrics_listen(metrics_listen_addr)
    except ListenError as e:
        _die(str(e))
    tls_addrs = [str(a) for a in addrs if a.tls]
    if tls_addrs and not (tls_cert and tls_key):
        _die(f"-l {tls_addrs[0]} needs --tls-cert FILE and --tls-key FILE")
    if tls_client_cert not in ("required", "optional"):
        _die(f"--tls-client-cert {tls_client_cert!r} is not valid; write required or optional")
    if not tls_addrs and (tls_cert or tls_key or tls_client_ca):
        _die("--tls-cert/--tls-key/--tls-client-ca are given but no -l tls://host:port "
             "listener; add one, or drop them")
    settings = Settings(config_path=router_config, workers=server_event_loops,
                        upstream_connections=upstream_connections, timeout_ms=timeout_ms,
                        connect_timeout_ms=connect_timeout_ms,
                        healthcheck_interval=durations["-H/--healthcheck-interval"],
                        dns_cache_ttl=durations["-t/--dns-cache-ttl"],
                        buffer_size=buffer_size, max_item_size=item_size, reuseport=reuseport,
                        max_conns=max_conns, body_budget=budget, reply_budget=replies,
                        body_timeout=durations["--body-timeout"],
                        idle_timeout=durations["--idle-timeout"],
                        graceful_timeout=graceful_timeout, watch_config=watch_config,
                        confirm_timeout=confirm_timeout, host_slots=host_slots,
                        count_metrics=os.environ.get("MCROUTER_METRICS", "on") != "off",
                        tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
                        tls_client_cert_required=tls_client_cert == "required",
                        tls_handshake_timeout=durations["--tls-handshake-timeout"])
    if tls_addrs:
        from mcrouter.tls import TlsConfigError
        try:
            settings.listener_context()
        except TlsConfigError as e:
            _die(str(e))
    from mcrouter.reload import load
    try:
        config, text = load(router_config)
    except ConfigError as e:
        _die(str(e))
    setup_logging(log_level, log_format)
    from mcrouter.hosttable import TableFull
    from mcrouter.master import Master, exit_now
    try:
        code = Master(settings, config, addrs, metrics_addr, text).run()
    except (ListenError, TableFull) as e:
        _die(str(e))
    except OSError as e:
        where = getattr(e, "listen_addr", None) or " ".join(map(str, addrs))
        _die(f"cannot listen on {where}: {e.strerror or e}; choose another address with -l")
    exit_now(code)


@app.command("check-config")
def check_config(router_config: str = typer.Option("router.yaml", "-f", "--router-config",
                                                   help="Route config (YAML).")) -> None:
    """Validate a config file and exit: 0 when valid, 2 with one line when not."""
    from mcrouter.upstream import tls_contexts
    try:
        config = load_config(router_config)
        tls_contexts(config)                # the certificates and keys are usable too
    except ConfigError as e:
        _die(str(e))
    typer.echo(f"{router_config}: ok ({config.route.type}, {len(config.hosts())} host(s))")


class _NotConnected(HostBase):
    """A host as ``mcrouter route`` sees it: an address, assumed up, never sent
    to (a HostBase, as the compiled routes hold only those)."""

    def __init__(self, addr: HostAddr) -> None:
        self.addr = addr
        self.healthy = True

    def send(self, req: object) -> None:
        raise RuntimeError("mcrouter route never sends")


@app.command("route")
def route(command: str = typer.Argument(..., help="A memcached command: get, set, delete, mg, ..."),
          key: str = typer.Argument("", help="The key."),
          router_config: str = typer.Option("router.yaml", "-f", "--router-config",
                                            help="Route config (YAML).")) -> None:
    """Print the route path and the server(s) a request would reach, without starting anything."""
    from mcrouter.routes import build_route, trace
    try:
        config = load_config(router_config)
    except ConfigError as e:
        _die(str(e))
    if config.dns_pools():              # where the keys go now: ask DNS as the router would
        from mcrouter.discovery import resolve_all
        config = config.with_members(resolve_all(config.dns_pools())[0])
    root = build_route(config, {a: _NotConnected(a) for a in config.hosts()})
    try:
        t = trace(root, command, key.encode())
    except ValueError as e:
        _die(str(e))
    for line in t.lines:
        typer.echo(line)
    typer.echo("servers: " + (" ".join(t.hosts) or "none (answered by the router)"))


@app.command("hosts")
def hosts(listen: str = typer.Option("tcp://:8080", "-l", "--listen",
                                     help="The running router's listen address.")) -> None:
    """Show each upstream host's state, its last error and when it changed."""
    from mcrouter.hosts_view import HostsError, fetch_hosts, render_hosts
    try:
        addr = parse_listen(listen)
        typer.echo(render_hosts(fetch_hosts(addr)), nl=False)
    except (ListenError, HostsError) as e:
        _die(str(e))


@app.command("version")
def version() -> None:
    """Print the version."""
    typer.echo(f"mcrouter {__version__}")


def main(argv: Optional[list[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in SUBCOMMANDS and args[0] not in ("--help", "-h", "--version")):
        args.insert(0, "run")
    app(args=args, prog_name="mcrouter")
