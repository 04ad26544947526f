"""The ``dicom-router`` command line.

``serve``, ``check``, ``init``, ``config show``, ``echo``, ``send``, ``queue``,
``route-test`` and ``explain-profile`` share
``-c FILE``; without it they use the embedded default configuration.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import structlog
import tomli_w

from router import __version__, become_router_process
from router.config import TIERS, ConfigError, load_config, validate
from router.config.checks import check_stage_files, running_router_pid
from router.observe.printable import EscapingWriter

EX_OK, EX_FAIL, EX_USAGE, EX_CONFIG = 0, 1, 2, 78


def main(argv: list[str] | None = None) -> int:
    """The CLI; everything it prints has control characters escaped (peers supply UIDs and reasons)."""
    become_router_process()
    if not isinstance(sys.stdout, EscapingWriter):
        sys.stdout, sys.stderr = EscapingWriter(sys.stdout), EscapingWriter(sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EX_USAGE
    try:
        return args.func(args)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-router", description="A pipeline-based DICOM router.")
    parser.add_argument("--version", action="version", version=f"dicom-router {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, func, help: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if config:
            p.add_argument("-c", "--config", type=Path, help="configuration file (default: the embedded default)")
        p.set_defaults(func=func)
        return p

    command("serve", cmd_serve, "Run the router.")
    p = command("check", cmd_check, "Validate a configuration; print every problem with its file and key.")
    p.add_argument(
        "--tier",
        choices=TIERS,
        default="environment",
        help="check up to this tier (default: environment: also directories and ports)",
    )
    p = command("init", cmd_init, "Write a starter router.toml and pipelines/ into DIR.", config=False)
    p.add_argument("dir", nargs="?", type=Path, default=Path("."))
    p = sub.add_parser("config", help="Show the resolved configuration.")
    config_sub = p.add_subparsers(metavar="ACTION")
    p = config_sub.add_parser("show", help="Print the configuration with includes merged and defaults filled, as TOML.")
    p.add_argument("-c", "--config", type=Path)
    p.set_defaults(func=cmd_config_show)
    p = command("echo", cmd_echo, "C-ECHO a configured dimse backend or HOST:PORT:AET; QIDO-RS a dicomweb backend.")
    p.add_argument("target")
    p = command(
        "send",
        cmd_send,
        "C-STORE (STOW-RS to a dicomweb backend) files and folders, recursively, to a backend or HOST:PORT:AET.",
    )
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--to", required=True, dest="target")
    p.add_argument("--calling-aet", help="calling AE title (default: the router's)")
    p.add_argument(
        "--transfer-syntax",
        help="send every file in this syntax (a keyword such as JPEG2000Lossless, or a UID), transcoded first",
    )
    p = command("queue", cmd_queue, "Inspect and manage the delivery queue.")
    p.add_argument("action", choices=("list", "retry", "purge", "adopt"))
    p.add_argument(
        "--backend",
        dest="backends",
        action="append",
        help="only this backend; adopt: queue the orphans for it (repeatable, required)",
    )
    p.add_argument("--id", dest="ids", type=int, action="append", help="only this delivery id (repeatable)")
    p.add_argument("--all", action="store_true", help="purge: every quarantined delivery")
    command("reload", cmd_reload, "Check a configuration, then have the running router switch to it (SIGHUP).")
    command("status", cmd_status, "One-screen summary of the running router (endpoints, queues, recent problems).")
    p = command("keygen", cmd_keygen, "Write a new secret key file (mode 0600) for the anonymize stage.", config=False)
    p.add_argument("file", type=Path)
    p = command(
        "passwd",
        cmd_passwd,
        "Set a user's password in a dicomweb endpoint's users_file (stored as a "
        "salted scrypt hash; the password is read from stdin or asked for).",
        config=False,
    )
    p.add_argument("file", type=Path)
    p.add_argument("user")
    p = command(
        "token",
        cmd_token,
        "Make a bearer token for a user of a dicomweb endpoint's tokens_file: printed once, stored as a hash.",
        config=False,
    )
    p.add_argument("file", type=Path)
    p.add_argument("user")
    p = command(
        "route-test",
        cmd_route_test,
        "Dry run: which pipelines, stages and backends an instance would go through, and what would change.",
    )
    p.add_argument("instance", type=Path, help="a DICOM Part-10 file")
    p.add_argument("--endpoint", help="the endpoint it arrives on (default: the first with a pipeline)")
    p.add_argument("--calling-aet", default="ROUTE_TEST", help="the sender's AE title (default: ROUTE_TEST)")
    p.add_argument("--called-aet", help="the AE title it calls (default: the endpoint's)")
    p.add_argument("--peer-address", default="127.0.0.1", help="the sender's IP address (default: 127.0.0.1)")
    p = command(
        "explain-profile",
        cmd_explain_profile,
        "Print the attribute -> action table of a pipeline's anonymize stage, with the option that decided each.",
    )
    p.add_argument("pipeline")
    return parser


def _load(args):
    return load_config(args.config)


# -- serve / check / init / config show -------------------------------------


def cmd_serve(args) -> int:
    from router import engine
    from router.observe.logging import setup_logging
    from router.service import DataDirInUse, RouterService
    from router.spool.queue_schema import QueueFromNewerRelease

    config = _load(args)
    missing = [i for i in check_stage_files(config) if i.severity == "error"]
    if missing:
        for issue in missing:
            print(issue, file=sys.stderr)
        print("dicom-router: not started: a file the configuration names is missing or unusable", file=sys.stderr)
        return EX_CONFIG
    setup_logging(
        config.router.log_level,
        config.router.log_format,
        process="receive",
        thread_context=engine.current_association_fields,
    )
    service = RouterService(config)
    service.handle_signals()
    try:
        service.start()
    except DataDirInUse as exc:
        print(f"dicom-router: {exc}", file=sys.stderr)
        return EX_FAIL
    except QueueFromNewerRelease as exc:
        structlog.get_logger("router.cli").error("not started", reason=str(exc))
        service.stop()
        return EX_FAIL
    except OSError as exc:
        print(f"dicom-router: cannot start: {exc}", file=sys.stderr)
        service.stop()
        return EX_FAIL
    service.serve_forever()
    return EX_OK


def cmd_check(args) -> int:
    config, issues = validate(args.config, through=args.tier)
    for issue in issues:
        print(issue, file=sys.stderr)
    errors = [i for i in issues if i.severity == "error"]
    if errors or config is None:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return EX_CONFIG
    print(
        f"configuration OK: {len(config.endpoints)} endpoint(s), {len(config.backends)} backend(s), "
        f"{len(config.pipelines)} pipeline(s)"
    )
    return EX_OK


def cmd_init(args) -> int:
    from router.starter import write_starter

    try:
        written = write_starter(args.dir)
    except FileExistsError as exc:
        print(f"dicom-router init: {exc} exists; nothing written", file=sys.stderr)
        return EX_FAIL
    for path in written:
        print(f"wrote {path}")
    print(f"next: dicom-router check -c {args.dir / 'router.toml'}")
    return EX_OK


def cmd_config_show(args) -> int:
    sys.stdout.write(tomli_w.dumps(load_config(args.config).to_dict()))
    return EX_OK


# -- echo / send / queue -------------------------------------------------------


def cmd_echo(args) -> int:
    from router.tools.targets import resolve_target

    backend = resolve_target(args.target, _load(args))
    if backend.config.type == "dicomweb":
        return _echo_dicomweb(backend)
    status = backend.echo()
    if isinstance(status, str):
        print(f"C-ECHO {backend.describe()}: no association: {status}", file=sys.stderr)
        return EX_FAIL
    if status is None:
        print(f"C-ECHO {backend.describe()}: no status in the response", file=sys.stderr)
        return EX_FAIL
    print(f"C-ECHO {backend.describe()}: status 0x{status:04X}")
    return EX_OK if status == 0 else EX_FAIL


def _echo_dicomweb(backend) -> int:
    """QIDO-RS ``limit=1``: 2xx is a working archive; another HTTP answer shows the server is
    there (enough for one that only stores, unless it refused the credentials)."""
    status, said = backend.echo()
    asked = f"GET {backend.describe()}/studies?limit=1"
    if status is None:
        print(f"{asked}: no answer: {said}", file=sys.stderr)
        return EX_FAIL
    server = f" from {said}" if said else ""
    if 200 <= status < 300:
        print(f"{asked}: HTTP {status}{server}: QIDO-RS answers")
        return EX_OK
    if status in (401, 403):
        print(f"{asked}: HTTP {status}{server}: the credentials were refused", file=sys.stderr)
        return EX_FAIL
    if backend.config.query:
        print(
            f"{asked}: HTTP {status}{server}: the server answers but not QIDO-RS, which query = true needs",
            file=sys.stderr,
        )
        return EX_FAIL
    print(f"{asked}: HTTP {status}{server}: the server answers (it does not serve QIDO-RS; STOW-RS is not tried)")
    return EX_OK


def cmd_send(args) -> int:
    from router.tools.send import send_paths
    from router.tools.targets import resolve_target
    from router.transcode.syntaxes import parse_syntax

    syntax = None
    if args.transfer_syntax:
        try:
            syntax = str(parse_syntax(args.transfer_syntax))
        except ValueError as exc:
            print(f"send: --transfer-syntax: {exc}", file=sys.stderr)
            return EX_USAGE
    backend = resolve_target(args.target, _load(args), calling_aet=args.calling_aet)
    return EX_OK if send_paths(backend, args.paths, transfer_syntax=syntax) else EX_FAIL


def cmd_queue(args) -> int:
    from router.tools.queue_admin import queue_command

    return queue_command(_load(args), args.action, backends=args.backends or [], ids=args.ids, purge_all=args.all)


# -- route-test / explain-profile ------------------------------------------------


def cmd_route_test(args) -> int:
    from router.tools.route_test import RouteTestError, route_test

    return _print_lines(
        "route-test",
        RouteTestError,
        lambda: route_test(
            _load(args),
            args.instance,
            endpoint=args.endpoint,
            calling_aet=args.calling_aet,
            called_aet=args.called_aet,
            peer_address=args.peer_address,
        ),
    )


def cmd_explain_profile(args) -> int:
    from router.tools.explain_profile import ExplainError, explain_profile

    return _print_lines("explain-profile", ExplainError, lambda: explain_profile(_load(args), args.pipeline))


def _print_lines(command: str, expected_error: type[Exception], produce) -> int:
    """Print what ``produce()`` returns, or the ``expected_error`` it raises (exit 1)."""
    try:
        lines = produce()
    except expected_error as exc:
        print(f"dicom-router {command}: {exc}", file=sys.stderr)
        return EX_FAIL
    print("\n".join(lines))
    return EX_OK


def cmd_passwd(args) -> int:
    import getpass

    from router.endpoints.dicomweb.auth import hash_password, set_entry

    password = getpass.getpass(f"password for {args.user}: ") if sys.stdin.isatty() else sys.stdin.readline()
    password = password.rstrip("\r\n")
    if not password:
        print("dicom-router passwd: an empty password is not accepted", file=sys.stderr)
        return EX_FAIL
    try:
        set_entry(args.file, args.user, hash_password(password))
    except (OSError, ValueError) as exc:
        print(f"dicom-router passwd: {exc}", file=sys.stderr)
        return EX_FAIL
    print(f"set the password of {args.user} in {args.file} (mode 0600)")
    return EX_OK


def cmd_token(args) -> int:
    from router.endpoints.dicomweb.auth import hash_token, new_token, set_entry

    token = new_token()
    try:
        set_entry(args.file, args.user, hash_token(token))
    except (OSError, ValueError) as exc:
        print(f"dicom-router token: {exc}", file=sys.stderr)
        return EX_FAIL
    print(token)
    print(f"the token of {args.user} (shown once; {args.file} keeps only its hash)", file=sys.stderr)
    return EX_OK


def cmd_keygen(args) -> int:
    from router.deid.keys import new_key_text

    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(
            f"dicom-router keygen: {args.file} exists; a key is never overwritten (its pseudonyms would change)",
            file=sys.stderr,
        )
        return EX_FAIL
    except OSError as exc:
        print(f"dicom-router keygen: cannot create {args.file}: {exc.strerror}", file=sys.stderr)
        return EX_FAIL
    with os.fdopen(fd, "w") as f:
        f.write(new_key_text())
    print(f"wrote a new key to {args.file} (mode 0600); keep it secret and back it up")
    return EX_OK


def cmd_status(args) -> int:
    from router.tools.status import StatusError, fetch_status, render_status

    try:
        status = fetch_status(_load(args))
    except StatusError as exc:
        print(f"dicom-router status: {exc}", file=sys.stderr)
        return EX_FAIL
    print("\n".join(render_status(status)))
    return EX_OK if status["ready"] else EX_FAIL


def cmd_reload(args) -> int:
    """Validate first (so a typo never reaches the router), then signal the router holding the data dir."""
    config, issues = validate(args.config, through="references")
    for issue in issues:
        print(issue, file=sys.stderr)
    if config is None or any(i.severity == "error" for i in issues):
        print("reload not requested: the configuration has errors; the router keeps its current one", file=sys.stderr)
        return EX_CONFIG
    pid = running_router_pid(config.router.data_dir)
    if pid is None:
        print(f"dicom-router reload: no running router holds {config.router.data_dir}", file=sys.stderr)
        return EX_FAIL
    os.kill(pid, signal.SIGHUP)
    print(f"reload requested (pid {pid}); the router logs what changed, or why it kept the old configuration")
    return EX_OK
