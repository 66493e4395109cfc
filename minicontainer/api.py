"""The public Python API: what the notebooks call, and what the CLI is a thin
layer over. One ``Runtime`` per state root (the daemon's role in Docker:
it owns the images and the containers).

    >>> import minicontainer as mc
    >>> rt = mc.Runtime()
    >>> rt.run("busybox", ["echo", "hello"], remove=True).stdout
    'hello\\n'
"""

from __future__ import annotations

import os
from pathlib import Path

from .runtime import container as _c
from .runtime.state import StateRoot


class Runtime:
    def __init__(self, root: str | Path | None = None) -> None:
        self.state = StateRoot(root)
        self._store = None

    @property
    def root(self) -> Path:
        return self.state.root

    @property
    def store(self):  # type: ignore[no-untyped-def]
        """The image store (OCI image layout + unpacked layers)."""
        if self._store is None:
            from .image.store import ImageStore

            self.state.ensure()  # the state root first, with its own (tight) mode
            self._store = ImageStore(self.state.images)
        return self._store

    # -- containers

    def create(self, image: str, command: list[str] | None = None, **options) -> _c.Container:  # type: ignore[no-untyped-def]
        """Make a container without starting it. Options are ``run``'s, by keyword:
        name, hostname, env, workdir, user, volumes, memory, cpus, pids_limit,
        network, ip, network_aliases, publish (``-p``), publish_all (``-P``),
        namespaces, entrypoint, tty, interactive, init, remove, device (``--device``),
        security_opt (``--security-opt seccomp=...``)."""
        if "namespaces" in options:
            options["namespaces_"] = options.pop("namespaces")
        options["auto_remove"] = options.pop("remove", False)
        return _c.create(self.state, self.store, image, command, **options)

    def run(
        self,
        image: str,
        command: list[str] | None = None,
        *,
        detach: bool = False,
        input: bytes | str | None = None,
        **options,
    ) -> _c.RunResult | _c.Container:  # type: ignore[no-untyped-def]
        """Like ``docker run``. In the foreground, returns a RunResult with the
        exit code and the captured output; with detach=True, the running Container."""
        container = self.create(image, command, detach=detach, **options)
        if detach:
            container.start_detached()
            return container
        out: list[bytes] = []
        err: list[bytes] = []

        def sink(stream: str, data: bytes) -> None:
            (out if stream == "stdout" else err).append(data)

        stdin = None
        if input is not None:
            # A temporary file, not a pipe: no deadlock however large the input.
            import tempfile

            tmp = tempfile.TemporaryFile()
            tmp.write(input.encode() if isinstance(input, str) else input)
            tmp.seek(0)
            stdin = os.dup(tmp.fileno())
            tmp.close()
        try:
            state = container.run_attached(sink=sink, stdin=stdin)
        finally:
            if stdin is not None:
                os.close(stdin)
        return _c.RunResult(
            id=container.id,
            name=container.spec.name,
            exit_code=state.exit_code if state.exit_code is not None else -1,
            stdout=b"".join(out).decode(errors="replace"),
            stderr=b"".join(err).decode(errors="replace"),
            oom_killed=state.oom_killed,
        )

    def container(self, ref: str) -> _c.Container:
        """A container by name, id or unique id prefix."""
        return _c.lookup(self.state, ref)

    def containers(self, all: bool = False) -> list[_c.Container]:  # noqa: A002 - docker ps -a
        return _c.list_containers(self.state, all)

    # -- images

    # -- networks

    def create_network(
        self,
        name: str,
        *,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
    ):  # type: ignore[no-untyped-def]
        """``network create``: a record with its subnet and a real bridge."""
        from .network import objects

        self.state.ensure()
        return objects.create(self.root, name, subnet=subnet, gateway=gateway, internal=internal)

    def networks(self):  # type: ignore[no-untyped-def]
        """The networks with a record (``bridge`` once a container used it)."""
        from .network import objects

        return objects.networks(self.root)

    def network(self, ref: str):  # type: ignore[no-untyped-def]
        from .network import objects

        return objects.lookup(self.root, ref)

    def remove_network(self, ref: str):  # type: ignore[no-untyped-def]
        from .network import objects

        return objects.remove(self.root, ref, live_ids=self.state.ids())

    def prune_networks(self) -> tuple[list[str], list[str]]:
        """``network prune``: first the repair of what a crash left (leases of
        containers that are gone, published ports of containers that no longer
        run, rules of bridges that are gone), then, as Docker's, the removal of
        every user-defined network no container uses. Returns (repairs, removed)."""
        from .network import endpoints, objects

        ids = self.state.ids()
        running = [c.id for c in self.containers(all=False)]
        repairs = endpoints.sweep(self.root, ids, running) if os.geteuid() == 0 else []
        removed = []
        for net in objects.networks(self.root):
            if net.name in objects.PREDEFINED or objects.ipam_of(self.root, net.name).leases(
                net.name
            ):
                continue
            objects.remove(self.root, net.name, live_ids=ids)
            removed.append(net.name)
        return repairs, removed

    def connect(
        self, network: str, container: str, *, ip: str | None = None, aliases: list[str] = ()
    ) -> dict:
        """``network connect``: the container's next interface, at once if it runs."""
        return self.container(container).connect(network, ip=ip, aliases=list(aliases))

    def disconnect(self, network: str, container: str) -> None:
        self.container(container).disconnect(network)

    def images(self):  # type: ignore[no-untyped-def]
        return self.store.images()

    def image(self, ref: str):  # type: ignore[no-untyped-def]
        return self.store.resolve(ref)

    def remove_image(self, ref: str, force: bool = False) -> list[str]:
        return self.store.remove(ref, force=force, in_use=self._image_in_use)

    def _image_in_use(self, image_id: str) -> bool:
        return any(c.spec.image_id == image_id for c in self.containers(all=True))

    def import_image(self, tarball: str | Path, ref: str | None = None):  # type: ignore[no-untyped-def]
        return self.store.import_tar(tarball, ref)

    def tag(self, source: str, target: str):  # type: ignore[no-untyped-def]
        """Give an image another name (``docker tag``)."""
        return self.store.tag(source, target)

    # -- layers: commit, diff, history (image/commit.py)

    def commit(
        self,
        container: str,
        ref: str | None = None,
        *,
        message: str = "",
        author: str = "",
        changes: list[str] | None = None,
        pause: bool = True,
    ):  # type: ignore[no-untyped-def]
        """The container's R/W layer becomes a new layer on top of its image; with
        `pause` (the default, as Docker) a running container is frozen meanwhile."""
        from .image import commit

        return commit.commit(
            self,
            self.container(container),
            ref,
            message=message,
            author=author,
            changes=changes or [],
            pause=pause,
        )

    def diff(self, container: str) -> list[tuple[str, str]]:
        """(kind, path) pairs like ``docker diff``: A added, C changed, D deleted."""
        from .image import commit

        return commit.diff(self.container(container))

    def history(self, ref: str) -> list[dict]:
        """The image's history entries, newest first, each with its layer's size."""
        from .image import commit

        return commit.history(self.store, ref)

    def inspect_image(self, ref: str) -> dict:
        """Docker-shaped ``image inspect``."""
        from .image import commit

        return commit.inspect_image(self.store, ref)

    # -- moving images: save, load, export (image/save.py, load.py, export.py)

    def save(self, refs: list[str], output, format: str = "docker") -> None:  # type: ignore[no-untyped-def]  # noqa: A002
        """Write images as a tar that ``docker load`` reads (format "docker"), or as an
        OCI image layout tar (format "oci")."""
        from .image.save import save

        save(self.store, refs, output, format=format)

    def load(self, source):  # type: ignore[no-untyped-def]
        """Read a ``docker save`` archive or an OCI image layout (tar or directory)."""
        from .image.load import load

        return load(self.store, source)

    def export(self, container: str, output) -> None:  # type: ignore[no-untyped-def]
        """The container's merged filesystem as a tar (``docker export``)."""
        from .image.export import export

        export(self, self.container(container), output)

    # -- store upkeep (image/maintenance.py)

    def verify(self) -> list[str]:
        """Check every blob's digest and every unpacked layer; the problems found."""
        from .image import maintenance

        return maintenance.verify(self.store)

    def prune_images(self, all: bool = False) -> dict:  # noqa: A002 - docker image prune -a
        """Delete dangling (or, with all, unused) images and unreferenced blobs and layers."""
        from .image import maintenance

        return maintenance.prune(self.store, in_use=self._image_in_use, all_=all)

    def disk_usage(self) -> dict:
        """``docker system df``: per image, shared and unique bytes; containers' R/W layers."""
        from .image import maintenance

        return maintenance.disk_usage(self.store, self.containers(all=True))

    # -- the workflow: build, push, pull (build/, registry/)

    def build(
        self,
        context: str | Path,
        tag: str | None = None,
        *,
        dockerfile: str | None = None,
        build_args: dict[str, str] | None = None,
        no_cache: bool = False,
        progress: bool = True,
        **options,
    ):  # type: ignore[no-untyped-def]
        """``docker build``: a Dockerfile, step by step, with a layer cache. Options
        (builder.build's): target, labels, output (a callable getting each line
        instead of stdout), dockerfile_in_context (the Dockerfile named inside the
        context, read confined to it, as the daemon must)."""
        from .build import builder

        return builder.build(
            self,
            context,
            tag,
            dockerfile=dockerfile,
            build_args=build_args or {},
            no_cache=no_cache,
            progress=progress,
            **options,
        )

    def push(self, ref: str, *, progress: bool = True, **options):  # type: ignore[no-untyped-def]
        """Upload an image (``HOST[:PORT]/REPO:TAG``) with the blobs the registry lacks.
        Options: credentials=(user, password), on_layer (registry/client.py)."""
        from .registry import client

        return client.push(self.store, ref, progress=progress, **options)

    def pull(self, ref: str, *, progress: bool = True, **options):  # type: ignore[no-untyped-def]
        """Download an image, only the blobs this store lacks. Options as push's."""
        from .registry import client

        return client.pull(self.store, ref, progress=progress, **options)

    def bootstrap(self, force: bool = False):  # type: ignore[no-untyped-def]
        """Build the local base images (busybox, hello-world) from this machine, and
        the sealed init every container starts with (runtime/init.py)."""
        from .image.bootstrap import bootstrap
        from .runtime import init

        init.ensure_built()
        return bootstrap(self.store, force=force)
