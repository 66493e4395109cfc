"""Push and pull of a ~100 MB image to/from the reference registry on loopback:
minicontainer's client vs `docker push` / `docker pull` of the same image.

Each round starts from an empty registry (its own storage dir) so both tools move
every byte; our gzip cache (push-compressed.json) is cleared each round, since
Docker compresses again on every push too. Runs are interleaved (ours, docker,
ours, ...) and we report medians and the ratio ours/docker (target <= 1.0x).

    sudo python3 docker-vs-vm/bench_transfer.py [--rounds 5] [--mb 100]
Needs: docker-registry (Debian), a running dockerd, busybox-static, root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minicontainer as mc  # noqa: E402
from minicontainer.image.oci import (
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER,
    Manifest,
    json_bytes,
)
from minicontainer.registry import client  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RefRegistry:
    """docker-registry serve on a fixed port, with a fresh storage dir per start."""

    def __init__(self, work: Path, port: int) -> None:
        self.work, self.port, self.proc = work, port, None
        self.n = 0

    def start(self) -> None:
        self.n += 1
        data = self.work / f"reg{self.n}"
        cfg = self.work / "reg.yml"
        cfg.write_text(
            f"version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: "
            f"{data}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{self.port}}}\n"
        )
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=1).read()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.work / f"reg{self.n}", ignore_errors=True)


def make_image(rt: mc.Runtime, ref: str, mb: int) -> None:
    """busybox + one uncompressed layer of `mb` MB (half random, half text: compresses
    about 2:1, like real binaries and files), stored as our commit stores layers."""
    import io
    import tarfile

    rt.bootstrap()
    store = rt.store
    base = store.resolve("busybox")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(mb):
            data = os.urandom(1 << 19) + (b"the quick brown fox %d\n" % i) * (1 << 19 // 23)
            data = data[: 1 << 20].ljust(1 << 20, b"\n")
            info = tarfile.TarInfo(f"data/f{i:04d}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    layer = store.put_blob_bytes(buf.getvalue(), MEDIA_TYPE_OCI_LAYER)
    config = dict(base.config)
    config["rootfs"] = {"type": "layers", "diff_ids": [*base.diff_ids, layer.digest]}
    config["history"] = [*config.get("history", []), {"created_by": "bench data"}]
    cfg = store.put_blob_bytes(json_bytes(config), MEDIA_TYPE_OCI_CONFIG)
    store.add_manifest(Manifest.build(cfg, [*base.layers, layer]), ref)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    for tool in ("docker-registry", "docker"):
        if shutil.which(tool) is None:
            print(f"missing {tool}", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    port = _free_port()
    host = f"127.0.0.1:{port}"
    reg = RefRegistry(work, port)
    laptop = mc.Runtime(work / "laptop")
    local = "bench/data:v1"
    make_image(laptop, local, args.mb)
    size = laptop.image(local).size
    # Docker gets the very same image (same config, so the same image ID).
    archive = work / "img.tar"
    laptop.save([local], str(archive))
    sh("docker", "load", "-i", str(archive))
    ours_ref, docker_ref = f"{host}/ours:v1", f"{host}/docker:v1"
    laptop.tag(local, ours_ref)
    sh("docker", "tag", local, docker_ref)
    res: dict[str, list[float]] = {
        k: [] for k in ("push ours", "push docker", "pull ours", "pull+unpack ours", "pull docker")
    }
    try:
        for r in range(args.rounds):
            reg.start()
            try:
                (laptop.store.root / client.COMPRESSED_RECORD).unlink(missing_ok=True)
                (laptop.store.root / client.PUSHED_RECORD).unlink(missing_ok=True)
                res["push ours"].append(timed(lambda: laptop.push(ours_ref, progress=False)))
                res["push docker"].append(timed(lambda: sh("docker", "push", docker_ref)))
                server = mc.Runtime(work / f"server{r}")
                res["pull ours"].append(timed(lambda s=server: s.pull(ours_ref, progress=False)))
                # docker pull also extracts the layers: time ours doing the same
                shutil.rmtree(work / f"server{r}", ignore_errors=True)
                server = mc.Runtime(work / f"server{r}")
                res["pull+unpack ours"].append(
                    timed(
                        lambda s=server: s.store.layer_dirs(s.pull(ours_ref, progress=False).image)
                    )
                )
                shutil.rmtree(work / f"server{r}", ignore_errors=True)
                sh("docker", "rmi", "-f", docker_ref, local)
                res["pull docker"].append(timed(lambda: sh("docker", "pull", docker_ref)))
                sh("docker", "tag", docker_ref, local)
            finally:
                reg.stop()
            print(
                f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items()),
                flush=True,
            )
    finally:
        subprocess.run(["docker", "rmi", "-f", docker_ref, local], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nimage: {size / 1e6:.0f} MB of layers (stored), {args.rounds} rounds, medians:")
    for op, mine in (("push", "push ours"), ("pull", "pull ours"), ("pull", "pull+unpack ours")):
        ours = statistics.median(res[mine])
        theirs = statistics.median(res[f"{op} docker"])
        op = mine.removesuffix(" ours")
        print(
            f"  {op}: minicontainer {ours:.2f}s, docker {theirs:.2f}s, ratio {ours / theirs:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
