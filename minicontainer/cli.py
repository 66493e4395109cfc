"""The command line: one small function per verb, each a thin layer over the
Python API (api.py). The verbs, flags and exit codes mirror Docker's:
125 when minicontainer itself fails, 126 when the command cannot be executed,
127 when it is not found, otherwise the container's own exit code.

Imports are lazy: ``minicontainer run`` must start fast, so only the verb
that runs loads what it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import EXIT_RUNTIME, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}. See '{self.prog} --help'.")


def _runtime(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The local Runtime, or a RemoteRuntime when a daemon answers and serves this
    verb (daemon/client.py: how it is found, which verbs it serves)."""
    client = _daemon(args)
    if client is not None:
        from .daemon.client import RemoteRuntime

        return RemoteRuntime(client)
    from .api import Runtime

    return Runtime(args.root)


SOCKET_NAME = "minicontainerd.sock"  # daemon/client.py's (a test checks they agree)


def _daemon(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if not hasattr(args, "client"):
        args.client = None
        # Without a host named or a socket there, not even the client is imported:
        # the local path pays one stat (daemon/client.py costs ~20 ms to import).
        host = args.daemon_host or os.environ.get("MINICONTAINER_HOST")
        if host in ("local", "none"):  # client.choose's words, said without importing it
            return None
        if (host or _socket_there(args)) and _served(args):
            from .daemon.client import choose

            args.client = choose(args.daemon_host, args.root)
    return args.client


def _socket_there(args: argparse.Namespace) -> bool:
    from .runtime.state import StateRoot

    return os.path.exists(StateRoot(args.root).root / SOCKET_NAME)


def _served(args: argparse.Namespace) -> bool:
    from .daemon.client import REMOTE_VERBS

    if args.verb == "version":
        return True
    if args.verb == "image":
        return args.action == "inspect"
    if args.verb == "network":  # the others read the same files locally
        return args.action in ("connect", "disconnect")
    if args.verb == "save" and args.format != "docker":
        return False  # the daemon writes docker archives only
    if args.verb == "load" and args.input and os.path.isdir(args.input):
        return False  # an OCI layout directory: no tar to send
    return args.verb in REMOTE_VERBS


def _write(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


# --- containers


def cmd_run(args: argparse.Namespace) -> int:
    from .network import wiring

    # runtime.create decides; the default is the bridge as root, pasta or none rootless
    mode = args.network or ("bridge" if os.geteuid() == 0 else "none")
    if wiring.has_bridge(mode) and _daemon(args) is None:
        wiring.warm_up()  # a helper wires the network while the container is prepared
    else:
        wiring.discard()  # __main__'s guess was wrong: no bridge here
    rt = _runtime(args)
    command = args.command or None
    container = rt.create(
        args.image,
        command,
        name=args.name,
        hostname=args.hostname,
        env=args.env,
        workdir=args.workdir,
        user=args.user,
        volumes=args.volume,
        memory=args.memory,
        cpus=args.cpus,
        pids_limit=args.pids_limit,
        network=args.network,
        ip=args.ip,
        network_aliases=args.network_alias,
        publish=args.publish,
        publish_all=args.publish_all,
        entrypoint=args.entrypoint,
        tty=args.tty,
        interactive=args.interactive,
        init=args.init,
        remove=args.rm,
        detach=args.detach,
        device=args.device,
        security_opt=args.security_opt,
    )
    if args.detach:
        container.start_detached()
        print(container.id)
        return 0

    def sink(stream: str, data: bytes) -> None:
        _write(1 if stream == "stdout" else 2, data)

    tty_stdin = 0 if args.tty and args.interactive else None
    stdin = 0 if args.interactive and not args.tty else None
    state = container.run_attached(sink=sink, stdin=stdin, tty_stdin=tty_stdin)
    return state.exit_code if state.exit_code is not None else EXIT_RUNTIME


def cmd_ps(args: argparse.Namespace) -> int:
    from .network import ports
    from .runtime.container import status_text

    rt = _runtime(args)
    rows = []
    for c in rt.containers(all=args.all):
        spec, state = c.spec, c.state()
        if args.quiet:
            rows.append([c.id[:12]])
            continue
        command = " ".join(spec.args)
        command = command if len(command) <= 20 else command[:19] + "…"
        rows.append(
            [
                c.id[:12],
                spec.image,
                f'"{command}"',
                spec.created[:19].replace("T", " "),
                status_text(state),
                ports.ps_text(ports.PortBinding(**p) for p in spec.ports),
                spec.name,
            ]
        )
    if args.quiet:
        for row in rows:
            print(row[0])
        return 0
    _table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows)
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    """``docker port``: the container's published ports, or where one of them is."""
    from .network import ports

    bindings = [ports.PortBinding(**p) for p in _runtime(args).container(args.container).spec.ports]
    if args.port:
        number, _, proto = args.port.partition("/")
        bindings = [
            b for b in bindings if f"{b.container_port}/{b.proto}" == f"{number}/{proto or 'tcp'}"
        ]
        if not bindings:
            raise UserError(
                f"No public port '{number}/{proto or 'tcp'}' published for {args.container}"
            )
        for b in bindings:
            print(f"{b.shown_ip}:{b.host_port}")
        return 0
    for line in ports.port_lines(bindings):
        print(line)
    return 0


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("   ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip())


def cmd_logs(args: argparse.Namespace) -> int:
    container = _runtime(args).container(args.container)
    for stream, text in container.logs(follow=args.follow):
        _write(1 if stream == "stdout" else 2, text.encode())
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    container = _runtime(args).container(args.container)

    def sink(stream: str, data: bytes) -> None:
        _write(1 if stream == "stdout" else 2, data)

    return container.exec(
        args.command,
        env=args.env,
        workdir=args.workdir,
        user=args.user,
        tty=args.tty,
        stdin=0 if args.interactive and not args.tty else None,
        sink=sink,
        tty_stdin=0 if args.tty and args.interactive else None,
    )


def _each(args: argparse.Namespace, action) -> int:  # type: ignore[no-untyped-def]
    """Apply ``action`` to every named container; report each failure, like Docker."""
    rt = _runtime(args)
    status = 0
    for ref in args.containers:
        try:
            action(rt.container(ref))
            print(ref)
        except UserError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_stop(args: argparse.Namespace) -> int:
    return _each(args, lambda c: c.stop(args.time))


def cmd_kill(args: argparse.Namespace) -> int:
    return _each(args, lambda c: c.kill(args.signal))


def cmd_pause(args: argparse.Namespace) -> int:
    return _each(args, lambda c: c.pause())


def cmd_unpause(args: argparse.Namespace) -> int:
    return _each(args, lambda c: c.unpause())


def cmd_rm(args: argparse.Namespace) -> int:
    return _each(args, lambda c: c.remove(force=args.force))


def cmd_inspect(args: argparse.Namespace) -> int:
    from .errors import ContainerNotFound, ImageNotFound

    rt = _runtime(args)
    results, status = [], 0
    for ref in args.names:
        try:
            results.append(rt.container(ref).inspect())
            continue
        except ContainerNotFound:
            pass
        try:
            results.append(rt.inspect_image(ref))
        except ImageNotFound:
            print(f"Error: No such object: {ref}", file=sys.stderr)
            status = 1
    if args.format:
        for item in results:
            print(_format(args.format, item))
    else:
        print(json.dumps(results, indent=4))
    return status


def _format(template: str, item: dict) -> str:
    """The ``{{.State.Status}}`` subset of Go templates that scripts use most."""
    import re

    def lookup(match: re.Match[str]) -> str:
        value: object = item
        for key in match.group(1).strip(".").split("."):
            value = value.get(key, "") if isinstance(value, dict) else ""
        return (
            json.dumps(value)
            if isinstance(value, (dict, list))
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )

    return re.sub(r"\{\{\s*(\.[\w.]*)\s*\}\}", lookup, template)


def cmd_stats(args: argparse.Namespace) -> int:
    import time

    rt = _runtime(args)
    containers = [rt.container(r) for r in args.containers] or rt.containers()
    while True:
        rows = []
        for c in containers:
            s = c.stats()
            if not s["available"]:
                rows.append([c.id[:12], c.name, "--", "--", "--", s["reason"]])
                continue
            cpu = "--" if s["cpu_percent"] is None else f"{s['cpu_percent']:.2f}%"
            limit = _size(s["memory_limit"]) if s["memory_limit"] else "no limit"
            pids = str(s["pids"]) if s["pids_limit"] is None else f"{s['pids']} / {s['pids_limit']}"
            rows.append(
                [
                    c.id[:12],
                    c.name,
                    cpu,
                    f"{_size(s['memory_usage'])} / {limit}",
                    pids,
                    str(s["oom_kills"]),
                ]
            )
        _table(["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "PIDS", "OOM KILLS"], rows)
        if args.no_stream:
            return 0
        time.sleep(1)
        print()


def _size(n: int | None) -> str:
    if n is None:
        return "--"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.4g}{unit}" if unit != "B" else f"{n}B"
        n /= 1024
    return str(n)


# --- images


def cmd_images(args: argparse.Namespace) -> int:
    rt = _runtime(args)
    rows = [
        [
            i.repository,
            i.tag,
            i.id.removeprefix("sha256:")[:12],
            i.created[:19].replace("T", " "),
            _size(i.size),
        ]
        for i in rt.images()
    ]
    if args.quiet:
        for row in rows:
            print(row[2])
        return 0
    _table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    rt = _runtime(args)
    status = 0
    for ref in args.images:
        try:
            for line in rt.remove_image(ref, force=args.force):
                print(line)
        except UserError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_import(args: argparse.Namespace) -> int:
    rt = _runtime(args)
    source = sys.stdin.buffer if args.file == "-" else args.file
    if source is not sys.stdin.buffer and not os.path.isfile(source):
        raise UserError(f"import: {args.file}: no such file")
    image = rt.store.import_tar(source, args.reference)
    print(image.id)
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    _runtime(args).tag(args.source, args.target)
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    image = _runtime(args).commit(
        args.container,
        args.reference,
        message=args.message,
        author=args.author,
        changes=args.change,
        pause=args.pause,
    )
    print(image.id)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    for kind, path in _runtime(args).diff(args.container):
        print(f"{kind} {path}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    rows = []
    for h in _runtime(args).history(args.image):
        created_by = h.get("created_by", "")
        if not args.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        rows.append(
            [
                h.get("id", "<missing>"),
                h.get("created", "")[:19].replace("T", " "),
                created_by,
                _size(h.get("size", 0)),
                h.get("comment", ""),
            ]
        )
    _table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows)
    return 0


def _output(path: str | None, what: str):  # type: ignore[no-untyped-def]
    if path:
        return path
    if sys.stdout.isatty():
        raise UserError(f"cowardly refusing to write {what} to a terminal: use -o FILE or redirect")
    return sys.stdout.buffer


def cmd_save(args: argparse.Namespace) -> int:
    _runtime(args).save(args.images, _output(args.output, "an image archive"), format=args.format)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    source = args.input or sys.stdin.buffer
    for image in _runtime(args).load(source):
        print(f"Loaded image: {image.ref}" if image.ref else f"Loaded image ID: {image.id}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _runtime(args).export(args.container, _output(args.output, "a filesystem archive"))
    return 0


def cmd_image(args: argparse.Namespace) -> int:
    rt = _runtime(args)
    if args.action == "inspect":
        print(json.dumps([rt.inspect_image(ref) for ref in args.names], indent=4))
        return 0
    if args.action == "prune":
        report = rt.prune_images(all=args.all)
        for line in report.get("deleted", []):
            print(f"deleted: {line}")
        print(f"Total reclaimed space: {_size(report.get('reclaimed', 0))}")
        return 0
    problems = rt.verify()  # verify
    for problem in problems:
        print(problem)
    print("store verified: no problems" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_system(args: argparse.Namespace) -> int:
    usage = _runtime(args).disk_usage()
    rows = [
        [
            kind,
            str(u["count"]),
            str(u.get("active", "")),
            _size(u["size"]),
            _size(u.get("reclaimable", 0)),
        ]
        for kind, u in usage["summary"].items()
    ]
    _table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows)
    if args.verbose:
        print()
        rows = [
            [
                i["ref"],
                i["id"][7:19],
                _size(i["size"]),
                _size(i["shared"]),
                _size(i["unique"]),
                str(i["containers"]),
            ]
            for i in usage["images"]
        ]
        _table(["IMAGE", "IMAGE ID", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS"], rows)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    build_args = {}
    for item in args.build_arg:
        key, eq, value = item.partition("=")
        if not eq:
            value = os.environ.get(key, "")
        build_args[key] = value
    result = _runtime(args).build(
        args.context,
        args.tag,
        dockerfile=args.file,
        build_args=build_args,
        no_cache=args.no_cache,
        progress=not args.quiet,
        network=args.network,
    )
    print(result.image.id if args.quiet else f"Successfully built {result.image.id[7:19]}")
    if args.tag and not args.quiet:
        print(f"Successfully tagged {result.image.ref}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    report = _runtime(args).push(args.image, progress=not args.quiet)
    print(report.summary())
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    report = _runtime(args).pull(args.image, progress=not args.quiet)
    print(report.summary())
    return 0


def cmd_network(args: argparse.Namespace) -> int:
    """network create|ls|inspect|rm|connect|disconnect (network/objects.py, endpoints.py)."""
    from .api import Runtime

    rt = Runtime(args.root)
    if args.action == "create":
        net = rt.create_network(
            args.name, subnet=args.subnet, gateway=args.gateway, internal=args.internal
        )
        print(net.id)
        return 0
    if args.action == "ls":
        rows = [["", "host", "host", ""], ["", "none", "null", ""]]
        rows += [[n.id[:12], n.name, "bridge", n.subnet] for n in rt.networks()]
        if not any(r[1] == "bridge" for r in rows):
            rows.append(["", "bridge", "bridge", "(made at first use)"])
        rows.sort(key=lambda r: r[1])
        _table(["NETWORK ID", "NAME", "DRIVER", "SUBNET"], rows)
        return 0
    if args.action == "inspect":
        found = [rt.network(ref)._asdict() for ref in args.names]
        print(json.dumps(found, indent=4))
        return 0
    if args.action == "prune":
        repairs, removed = rt.prune_networks()
        for line in repairs:
            print(f"repaired: {line}")
        if removed:
            print("Deleted Networks:\n" + "\n".join(removed))
        return 0
    if args.action in ("connect", "disconnect"):
        rt = _runtime(args)  # through the daemon when one answers
    if args.action == "connect":
        rt.connect(args.network, args.container, ip=args.ip, aliases=args.alias)
        return 0
    if args.action == "disconnect":
        rt.disconnect(args.network, args.container)
        return 0
    status = 0
    for ref in args.names:  # rm
        try:
            rt.remove_network(ref)
            print(ref)
        except UserError as e:
            print(f"Error: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_registry(args: argparse.Namespace) -> int:
    from .registry import server
    from .runtime.state import StateRoot

    root_dir = args.root_dir or str(StateRoot(args.root).root / "registry")
    return server.main_serve(
        root_dir,
        args.host,
        args.port,
        htpasswd=args.htpasswd,
        max_blob_size=server.parse_size(args.max_blob_size),
        upload_expiry=args.upload_expiry,
    )


def cmd_login(args: argparse.Namespace) -> int:
    import getpass

    from .registry import client

    user = args.username
    if args.password_stdin:
        if not user:
            raise UserError("login: --password-stdin needs --username")
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")  # as docker
    else:
        if not sys.stdin.isatty():
            raise UserError("login: no terminal to ask for the password on: use --password-stdin")
        user = user or input("Username: ").strip()
        password = getpass.getpass("Password: ")
    client.login(args.server, user, password)
    print("Login Succeeded")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from .registry import auth

    host = auth.normalize_host(args.server)
    if auth.remove_credentials(host):
        print(f"Removing login credentials for {host}")
    else:
        print(f"Not logged in to {host}")
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    for image in _runtime(args).bootstrap(force=args.force):
        print(f"{image.ref}\t{image.id}")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from . import __version__

    print(f"minicontainer: {__version__}")
    client = _daemon(args)
    if client is None:
        print("daemon: none (local)")
        return 0
    v = _runtime(args).version()
    api, served = v.get("ApiVersion", "?"), v.get("Version", "?")
    print(f"daemon: {client.host}  (API {api}, minicontainerd {served})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .lessons.checks import check_all

    worst = 0
    for c in check_all():
        mark = {"ok": "ok ", "warn": "!! ", "missing": "-- "}[c.status]
        print(f"{mark} {c.name}: {c.detail}")
        if c.status != "ok" and c.fix:
            print(f"    fix: {c.fix}")
        worst = max(worst, 1 if c.status == "missing" and c.essential else 0)
    return worst


# --- the parser: only the verb that runs gets its arguments built (startup time)


def args_run(r: argparse.ArgumentParser) -> None:
    r.add_argument("--help", action="help", help="show this help")
    r.add_argument("--rm", action="store_true", help="remove the container when it exits")
    r.add_argument("-d", "--detach", action="store_true", help="run in the background, print id")
    r.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
    r.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    r.add_argument("--name")
    r.add_argument("-h", "--hostname")  # -h is --hostname here, as in docker run
    r.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    r.add_argument("-w", "--workdir", metavar="DIR")
    r.add_argument("-u", "--user", metavar="UID[:GID]")
    r.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]")
    r.add_argument("-m", "--memory", metavar="SIZE", help="memory limit, e.g. 64m")
    r.add_argument("--cpus", help="CPU quota, e.g. 0.5")
    r.add_argument("--pids-limit", metavar="N")
    r.add_argument(
        "--network", metavar="bridge|none|host|NAME",
        help="the network to join (default: bridge as root, none rootless)",
    )  # fmt: skip
    r.add_argument("--ip", metavar="IPv4", help="the address on a user-defined network")
    r.add_argument("--network-alias", action="append", default=[], metavar="NAME",
                   help="another name peers on the network can use")  # fmt: skip
    r.add_argument("-p", "--publish", action="append", default=[],
                   metavar="[IP:][HOSTPORT:]PORT[/udp]", help="publish a port")  # fmt: skip
    r.add_argument("-P", "--publish-all", action="store_true",
                   help="publish the image's exposed ports on random host ports")  # fmt: skip
    r.add_argument("--entrypoint")
    r.add_argument("--init", action="store_true", help="run a tiny init as PID 1")
    r.add_argument(
        "--device", action="append", default=[], metavar="HOST[:CTR][:rwm]",
        help="give the container a host device (its node and the cgroup's permission)",
    )  # fmt: skip
    r.add_argument(
        "--security-opt", action="append", default=[], metavar="seccomp=unconfined|FILE",
        help="a seccomp profile in Docker's JSON format, or none",
    )  # fmt: skip
    r.add_argument("image")
    r.add_argument("command", nargs=argparse.REMAINDER)


def args_ps(s: argparse.ArgumentParser) -> None:
    s.add_argument("-a", "--all", action="store_true")
    s.add_argument("-q", "--quiet", action="store_true")


def args_logs(s: argparse.ArgumentParser) -> None:
    s.add_argument("-f", "--follow", action="store_true")
    s.add_argument("container")


def args_exec(s: argparse.ArgumentParser) -> None:
    s.add_argument("-i", "--interactive", action="store_true")
    s.add_argument("-t", "--tty", action="store_true")
    s.add_argument("-e", "--env", action="append", default=[])
    s.add_argument("-w", "--workdir")
    s.add_argument("-u", "--user")
    s.add_argument("container")
    s.add_argument("command", nargs=argparse.REMAINDER)


def args_stop(s: argparse.ArgumentParser) -> None:
    s.add_argument("-t", "--time", type=float, default=10)
    s.add_argument("containers", nargs="+")


def args_kill(s: argparse.ArgumentParser) -> None:
    s.add_argument("-s", "--signal", default="SIGKILL")
    s.add_argument("containers", nargs="+")


def args_containers(s: argparse.ArgumentParser) -> None:
    s.add_argument("containers", nargs="+")


def args_rm(s: argparse.ArgumentParser) -> None:
    s.add_argument("-f", "--force", action="store_true")
    s.add_argument("containers", nargs="+")


def args_inspect(s: argparse.ArgumentParser) -> None:
    s.add_argument("-f", "--format")
    s.add_argument("names", nargs="+")


def args_stats(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-stream", action="store_true")
    s.add_argument("containers", nargs="*")


def args_images(s: argparse.ArgumentParser) -> None:
    s.add_argument("-q", "--quiet", action="store_true")


def args_rmi(s: argparse.ArgumentParser) -> None:
    s.add_argument("-f", "--force", action="store_true")
    s.add_argument("images", nargs="+")


def args_import(s: argparse.ArgumentParser) -> None:
    s.add_argument("file", help="a tar or tar.gz file, or - for stdin")
    s.add_argument("reference", nargs="?", help="REPOSITORY[:TAG]")


def args_tag(s: argparse.ArgumentParser) -> None:
    s.add_argument("source", help="IMAGE[:TAG]")
    s.add_argument("target", help="IMAGE[:TAG]")


def args_commit(s: argparse.ArgumentParser) -> None:
    s.add_argument("-m", "--message", default="")
    s.add_argument("-a", "--author", default="")
    s.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        help="a Dockerfile instruction for the config: CMD, ENV, WORKDIR, ...",
    )
    s.add_argument(
        "-p",
        "--pause",
        type=_bool_word,
        default=True,
        metavar="true|false",
        help="freeze a running container while committing (default true; cgroup v1 freezer)",
    )
    s.add_argument("container")
    s.add_argument("reference", nargs="?", help="REPOSITORY[:TAG]")


def _bool_word(text: str) -> bool:
    """Docker's boolean flag values (Go strconv.ParseBool)."""
    words = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: use true or false")
    return words[text.lower()]


def args_container(s: argparse.ArgumentParser) -> None:
    s.add_argument("container")


def args_history(s: argparse.ArgumentParser) -> None:
    s.add_argument("--no-trunc", action="store_true")
    s.add_argument("image")


def args_save(s: argparse.ArgumentParser) -> None:
    s.add_argument("-o", "--output", help="a file (default: standard output)")
    s.add_argument(
        "--format",
        choices=["docker", "oci"],
        default="docker",
        help="docker: what docker load reads; oci: an OCI image layout",
    )
    s.add_argument("images", nargs="+")


def args_load(s: argparse.ArgumentParser) -> None:
    s.add_argument("-i", "--input", help="a tar file or an OCI layout directory (default: stdin)")


def args_export(s: argparse.ArgumentParser) -> None:
    s.add_argument("-o", "--output", help="a file (default: standard output)")
    s.add_argument("container")


def args_image(s: argparse.ArgumentParser) -> None:
    sub = s.add_subparsers(dest="action", required=True, parser_class=_Parser)
    i = sub.add_parser("inspect", help="Docker-shaped information on images")
    i.add_argument("names", nargs="+")
    p = sub.add_parser("prune", help="remove dangling images and unreferenced blobs and layers")
    p.add_argument("-a", "--all", action="store_true", help="also images no container uses")
    sub.add_parser("verify", help="check every blob's digest and every unpacked layer")


def args_system(s: argparse.ArgumentParser) -> None:
    sub = s.add_subparsers(dest="action", required=True, parser_class=_Parser)
    df = sub.add_parser("df", help="disk used by images (shared and unique) and containers")
    df.add_argument("-v", "--verbose", action="store_true")


def args_build(s: argparse.ArgumentParser) -> None:
    s.add_argument("-t", "--tag", help="NAME[:TAG]")
    s.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    s.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--network", metavar="bridge|none|host|NAME", help="for RUN (default: bridge)")
    s.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    s.add_argument("context")


def args_transfer(s: argparse.ArgumentParser) -> None:
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.add_argument("image", help="HOST[:PORT]/REPO[:TAG]")


def args_port(s: argparse.ArgumentParser) -> None:
    s.add_argument("container")
    s.add_argument("port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")


def args_network(s: argparse.ArgumentParser) -> None:
    sub = s.add_subparsers(dest="action", required=True, parser_class=_Parser)
    create = sub.add_parser("create", help="a bridge network with its own subnet")
    create.add_argument("--subnet", help="e.g. 10.10.0.0/24 (default: a free one)")
    create.add_argument("--gateway", help="the bridge's address (default: the first)")
    create.add_argument("--internal", action="store_true", help="no traffic out of the subnet")
    create.add_argument("name")
    sub.add_parser("ls", help="list networks")
    sub.add_parser("prune", help="repair what a crash left, remove unused networks")
    for verb in ("inspect", "rm"):
        sub.add_parser(verb).add_argument("names", nargs="+", metavar="NETWORK")
    connect = sub.add_parser("connect", help="connect a container to a network")
    connect.add_argument("--ip", metavar="IPv4")
    connect.add_argument("--alias", action="append", default=[], metavar="NAME")
    disconnect = sub.add_parser("disconnect", help="disconnect a container from a network")
    for p in (connect, disconnect):
        p.add_argument("network", metavar="NETWORK")
        p.add_argument("container", metavar="CONTAINER")


def args_registry(s: argparse.ArgumentParser) -> None:
    sub = s.add_subparsers(dest="action", required=True, parser_class=_Parser)
    serve = sub.add_parser("serve", help="run the embedded registry (OCI distribution API)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--root", dest="root_dir", help="where blobs live (default: STATE/registry)")
    serve.add_argument(
        "--htpasswd",
        metavar="FILE",
        help="require these users (bcrypt, htpasswd -B); needed beyond loopback",
    )
    serve.add_argument(
        "--max-blob-size", default="4g", metavar="SIZE", help="largest blob accepted (413 above)"
    )
    serve.add_argument(
        "--upload-expiry",
        type=float,
        default=3600.0,
        metavar="SECS",
        help="remove upload sessions idle this long",
    )


def args_login(s: argparse.ArgumentParser) -> None:
    s.add_argument("-u", "--username", metavar="USER")
    s.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    s.add_argument("server", nargs="?", default="registry-1.docker.io", help="HOST[:PORT]")


def args_logout(s: argparse.ArgumentParser) -> None:
    s.add_argument("server", nargs="?", default="registry-1.docker.io", help="HOST[:PORT]")


def args_bootstrap(s: argparse.ArgumentParser) -> None:
    s.add_argument("--force", action="store_true")


def args_none(s: argparse.ArgumentParser) -> None:
    pass


# verb -> (what it does, its arguments, its function)
VERBS = {
    "run": ("Create and run a new container from an image", args_run, cmd_run),
    "ps": ("List containers", args_ps, cmd_ps),
    "port": ("List a container's published ports", args_port, cmd_port),
    "logs": ("Fetch the logs of a container", args_logs, cmd_logs),
    "exec": ("Run a command in a running container", args_exec, cmd_exec),
    "stop": ("Stop running containers (stop signal, then SIGKILL)", args_stop, cmd_stop),
    "kill": ("Send a signal to running containers", args_kill, cmd_kill),
    "pause": ("Freeze all processes of containers (cgroup freezer)", args_containers, cmd_pause),
    "unpause": ("Let paused containers run again", args_containers, cmd_unpause),
    "rm": ("Remove containers", args_rm, cmd_rm),
    "inspect": ("Low-level information on containers or images", args_inspect, cmd_inspect),
    "stats": ("Memory, CPU and pids of running containers (from cgroups)", args_stats, cmd_stats),
    "images": ("List images", args_images, cmd_images),
    "rmi": ("Remove images", args_rmi, cmd_rmi),
    "import": ("Make a one-layer image from a rootfs tarball", args_import, cmd_import),
    "commit": ("Create a new image from a container's changes", args_commit, cmd_commit),
    "diff": ("Changes to files in a container's filesystem (A, C, D)", args_container, cmd_diff),
    "history": ("Show the history of an image, layer by layer", args_history, cmd_history),
    "tag": ("Give an image another name", args_tag, cmd_tag),
    "save": ("Save images to a tar archive (docker load reads it)", args_save, cmd_save),
    "load": ("Load images from a docker save archive or an OCI layout", args_load, cmd_load),
    "export": ("Export a container's filesystem as a tar archive", args_export, cmd_export),
    "image": ("Manage images: inspect, prune, verify", args_image, cmd_image),
    "system": ("Disk usage: system df", args_system, cmd_system),
    "build": ("Build an image from a Dockerfile", args_build, cmd_build),
    "push": ("Upload an image to a registry (only the blobs it lacks)", args_transfer, cmd_push),
    "pull": ("Download an image from a registry (only the blobs we lack)", args_transfer, cmd_pull),
    "login": ("Store credentials for a registry (after checking them)", args_login, cmd_login),
    "logout": ("Forget the credentials stored for a registry", args_logout, cmd_logout),
    "network": (
        "Networks: create, ls, inspect, rm, connect, disconnect",
        args_network,
        cmd_network,
    ),
    "registry": ("Run the embedded registry: registry serve", args_registry, cmd_registry),
    "bootstrap": ("Build the local base images from this machine", args_bootstrap, cmd_bootstrap),
    "version": (
        "Say this version, and which daemon (or none) the CLI uses",
        args_none,
        cmd_version,
    ),
    "check": (
        "Say what this machine supports, and how to fix what is missing",
        args_none,
        cmd_check,
    ),
}

USAGE = """usage: minicontainer [--root DIR] [--host unix:///PATH|local] COMMAND [ARG...]

A small but real container runtime.

options:
  --root DIR   state root (default /var/lib/minicontainer; rootless
               $XDG_DATA_HOME/minicontainer; or $MINICONTAINER_ROOT)
  --host H     the daemon to use (or $MINICONTAINER_HOST; local: none); default
               ROOT/minicontainerd.sock when a daemon answers there

commands:
"""


def usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = [f"  {verb.ljust(width)}  {help_}" for verb, (help_, _, _) in VERBS.items()]
    return (
        USAGE + "\n".join(lines) + "\n\nRun 'minicontainer COMMAND --help' for a command's options."
    )


def parse(argv: list[str]) -> argparse.Namespace | None:
    """Global options, then the verb and its own arguments. None: help was shown."""
    root = host = None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        option = argv[i]
        if option in ("-h", "--help"):
            print(usage())
            return None
        if option == "--root" and i + 1 < len(argv):
            root, i = argv[i + 1], i + 2
        elif option.startswith("--root="):
            root, i = option.partition("=")[2], i + 1
        elif option == "--host" and i + 1 < len(argv):
            host, i = argv[i + 1], i + 2
        elif option.startswith("--host="):
            host, i = option.partition("=")[2], i + 1
        else:
            raise UserError(f"unknown flag: {option}. See 'minicontainer --help'.")
    if i == len(argv):
        print(usage())
        return None
    verb = argv[i]
    if verb not in VERBS:
        raise UserError(f"'{verb}' is not a minicontainer command. See 'minicontainer --help'.")
    help_, add_arguments, func = VERBS[verb]
    parser = _Parser(prog=f"minicontainer {verb}", description=help_, add_help=verb != "run")
    add_arguments(parser)
    args = parser.parse_args(argv[i + 1 :])
    args.root, args.daemon_host, args.verb, args.func = root, host, verb, func
    return args


def main(argv: list[str] | None = None) -> None:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        if args is None:
            sys.exit(0)
        if args.verb == "exec" and not args.command:
            raise UserError("exec: requires a command")
        code = args.func(args)
    except UserError as e:
        print(f"minicontainer: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 0
    except OSError as e:  # the machine said no (permissions, full disk, ...): one line
        where = f": {e.filename}" if e.filename else ""
        print(f"minicontainer: {e.strerror or e}{where}", file=sys.stderr)
        code = EXIT_RUNTIME
    # The interpreter's teardown collects every object once more (~10 ms of each
    # command, half a short run's tail); the kernel frees the memory anyway.
    # atexit handlers still run.
    import gc

    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    main()
