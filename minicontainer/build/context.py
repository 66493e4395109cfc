"""The build context: the files a build may COPY, minus `.dockerignore`, and their
checksums for the layer cache.

`.dockerignore` follows Docker's rules (docs.docker.com/build/building/context,
moby pkg/fileutils PatternMatcher): one pattern a line, `#` comments, paths
cleaned and relative to the context root, `*` and `?` within one path element,
`**` across any number of them, `!` re-includes, the last matching line wins,
and a pattern matching a directory matches everything below it.

Paths are followed as moby's FollowSymlinkInScope does for a COPY source
(builder/dockerfile/copy.go): every symlink in the path the Dockerfile names is
followed, but inside the tree only: an absolute target starts again at its root
and `..` stops there, so `link -> /etc` names the context's own `etc`. A glob
never descends through a symlink (filepath.Walk does not), and a symlink met
while copying a directory is copied as a symlink. An ignored path is absent, as
Docker never sends it: no symlink may lead to it. Everything is read through
descriptors (openat2(2) RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS on the resolved path,
O_NOFOLLOW walks), so a link swapped in during the build cannot redirect a read
out of the tree or onto an ignored file. The same `Tree` reads another stage's
files for `COPY --from`.

Checksums are sha256 over each file's relative path, type, mode and content (or
link target). Contents are hashed once and remembered by (path, size, mtime,
ctime, inode) in STORE/build-sums.json, as git's index does: a cached rebuild
stats the context instead of reading it.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .. import files
from ..errors import UserError
from ..image.oci import sha256_bytes


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(.*/)?")
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i)
            if end < 0:
                out.append(re.escape(c))
            else:
                out.append("[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


class Ignore:
    """The patterns of a `.dockerignore`."""

    def __init__(self, text: str = "") -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            line = os.path.normpath(line).lstrip("/")
            if line in ("", "."):
                continue
            self.rules.append((negate, _pattern_regex(line)))

    @classmethod
    def read(cls, tree: Tree) -> Ignore:
        """The tree's .dockerignore (a symlink followed inside the tree only)."""
        rel = tree.resolve(".dockerignore")
        if rel is None:
            return cls()
        try:
            with tree.open_file(rel) as f:
                return cls(f.read().decode(errors="replace"))
        except FileNotFoundError:
            return cls()

    def ignored(self, rel: str) -> bool:
        """Whether the relative path (or a parent directory of it) is excluded."""
        if not self.rules:
            return False
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negate, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                result = not negate
        return result


MAX_HOPS = 40  # symlinks followed in one path, as Linux allows (ELOOP)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def follow_in_scope(
    path: str,
    lstat: Callable[[str], os.stat_result | None],
    readlink: Callable[[str], str],
    *,
    must_exist: bool = True,
    hidden: Callable[[str], bool] = lambda rel: False,
) -> str | None:
    """`path` with its symlinks followed inside a root (moby FollowSymlinkInScope):
    an absolute target restarts at the root, `..` never climbs above it. Returns
    the relative path without symlinks ("" for the root) or None when a component
    is missing (with `must_exist`), not a directory, or `hidden` (ignored)."""
    parts = [p for p in path.split("/") if p]
    out: list[str] = []
    hops = 0
    missing = False  # below a missing entry nothing exists: the rest is only lexical
    while parts:
        head = parts.pop(0)
        if head == ".":
            continue
        if head == "..":
            if out:
                out.pop()
            continue
        rel = "/".join([*out, head])
        st = None if missing else lstat(rel)
        if st is None:
            if must_exist:
                return None
            missing = True
            out.append(head)
            continue
        if stat.S_ISLNK(st.st_mode):
            if hidden(rel):
                return None
            hops += 1
            if hops > MAX_HOPS:
                raise UserError(f"{path}: too many levels of symbolic links")
            target = readlink(rel)
            if target.startswith("/"):
                out = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if parts and must_exist and not stat.S_ISDIR(st.st_mode):
            return None
        out.append(head)
    rel = "/".join(out)
    return None if rel and hidden(rel) else rel


class Tree:
    """A directory we do not trust (a build context, another stage's files), read
    only through descriptors confined to it. Relative paths name its entries; the
    root is "."."""

    def __init__(
        self, root: str | os.PathLike[str], ignore: Ignore | None = None, in_root: bool = False
    ) -> None:
        self.root = Path(root)
        self.fd = os.open(root, _DIR)
        self.ignore = ignore or Ignore()
        self.in_root = in_root  # an image's tree: paths mean what chroot(2) would see

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # -- single entries (`rel` is resolved: no symlink before its last component)

    def _open(self, rel: str, flags: int) -> int:
        return files.open_beneath(self.fd, rel, flags, in_root=self.in_root, no_symlinks=True)

    def _parent(self, rel: str) -> tuple[int, str]:
        head, name = os.path.split(rel.strip("/"))
        return self._open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), name or "."

    def lstat(self, rel: str) -> os.stat_result | None:
        try:
            pfd, name = self._parent(rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            os.close(pfd)

    def readlink(self, rel: str) -> str:
        pfd, name = self._parent(rel)
        try:
            return os.readlink(name, dir_fd=pfd)
        finally:
            os.close(pfd)

    def open_file(self, rel: str) -> IO[bytes]:
        """A regular file, opened without following any symlink (a FIFO swapped in
        is refused, not waited on)."""
        fd = self._open(rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise UserError(f"{rel}: not a regular file")
        os.set_blocking(fd, True)
        return f

    def opener(self, rel: str) -> Callable[[], IO[bytes]]:
        return lambda: self.open_file(rel)

    # -- which files

    def resolve(self, path: str, *, ignoring: bool = True) -> str | None:
        """The entry `path` names, symlinks followed inside the tree ("." for the root).
        `ignoring=False` sees ignored paths too (the Dockerfile, as Docker sends it)."""
        hidden = self._hidden if ignoring else (lambda rel: False)
        rel = follow_in_scope(path, self.lstat, self.readlink, hidden=hidden)
        return None if rel is None else rel or "."

    def _hidden(self, rel: str) -> bool:
        return bool(self.ignore.rules) and self.ignore.ignored(rel)

    def match(self, pattern: str) -> list[tuple[str, str]]:
        """(name, entry) of the sources a COPY names: a path or a glob, never outside
        the tree, never ignored. `name` is as written (a destination's file name),
        `entry` the resolved path to read."""
        clean = os.path.normpath(pattern.lstrip("/")) if pattern.strip("/") else "."
        if clean == ".." or clean.startswith("../"):
            if not self.in_root:
                raise ValueError(f"{pattern}: outside the build context")
            clean = os.path.normpath("/" + clean).lstrip("/") or "."
        names = self._glob(clean) if glob.has_magic(clean) else [clean]
        out = []
        for name in names:
            rel = self.resolve(name)
            if rel is not None:
                out.append((name, rel))
        return out

    def _glob(self, pattern: str) -> list[str]:
        # Per path element, like Go's filepath.Glob; dot files match (Docker's do).
        # Only real directories are descended: a symlink may match, never be gone through.
        found = ["."]
        for part in pattern.split("/"):
            nxt = []
            for base in found:
                st = self.lstat(base)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    continue
                names = self.listdir(base) if glob.has_magic(part) else [part]
                for name in names:
                    rel = name if base == "." else f"{base}/{name}"
                    if fnmatch.fnmatchcase(name, part) and self.lstat(rel) is not None:
                        nxt.append(rel)
            found = nxt
        # Ignored is decided on the match (a `!` rule may re-include what is below an
        # ignored directory), never on the way to it.
        return sorted(f for f in found if not self._hidden(f))

    def listdir(self, rel: str) -> list[str]:
        fd = self._open(rel, _DIR)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def walk(self, rel: str) -> list[str]:
        """`rel` and everything below it that is not ignored, parents first, sorted."""
        return [r for r, _ in self.walk_stat(rel)]

    def walk_stat(self, rel: str) -> list[tuple[str, os.stat_result]]:
        """walk() with each entry's lstat (one scandir per directory: a cached
        rebuild of a big context is mostly this). Directories are opened one below
        the other with O_NOFOLLOW: a symlink is listed, never entered."""
        st = self.lstat(rel)
        if st is None:
            raise FileNotFoundError(f"{rel}: no such file or directory")
        out = [(rel, st)]
        if stat.S_ISDIR(st.st_mode):
            fd = self._open(rel, _DIR | os.O_NOFOLLOW)
            try:
                self._scan(fd, "" if rel == "." else rel + "/", out)
            finally:
                os.close(fd)
        return out

    def _scan(self, fd: int, prefix: str, out: list[tuple[str, os.stat_result]]) -> None:
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            child = prefix + e.name
            if self._hidden(child):
                continue
            st = e.stat(follow_symlinks=False)
            out.append((child, st))
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(e.name, _DIR | os.O_NOFOLLOW, dir_fd=fd)
                try:
                    self._scan(sub, child + "/", out)
                finally:
                    os.close(sub)


class Context(Tree):
    """A context directory seen through its .dockerignore."""

    def __init__(self, root: str | os.PathLike[str], sums_file: Path | None = None) -> None:
        path = Path(root).resolve()  # the user named it: a link to it is fine
        if not path.is_dir():
            raise FileNotFoundError(f"build context {root} is not a directory")
        super().__init__(path)
        self.ignore = Ignore.read(self)
        self.sums_file = sums_file
        self._sums: dict[str, list] | None = None
        self._dirty = False

    # -- checksums

    def _load_sums(self) -> dict[str, list]:
        if self._sums is None:
            self._sums = {}
            if self.sums_file is not None:
                try:
                    self._sums = json.loads(self.sums_file.read_text()).get(str(self.root), {})
                except (FileNotFoundError, ValueError):
                    pass
        return self._sums

    def file_sum(self, rel: str, st: os.stat_result) -> str:
        sums = self._load_sums()
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        got = sums.get(rel)
        if got and got[:4] == key:
            return str(got[4])
        import hashlib  # OpenSSL's: fast on big files, slow to import

        h = hashlib.sha256()
        with self.open_file(rel) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        sums[rel] = [*key, h.hexdigest()]
        self._dirty = True
        return h.hexdigest()

    def checksum(self, sources: list[tuple[str, str]]) -> str:
        """One digest for these (name, entry) sources and everything below them."""
        lines: list[bytes] = []
        for name, top in sources:
            lines.append(f"source\0{name}\0{top}\n".encode())
            for rel, st in self.walk_stat(top):
                what = ""
                if stat.S_ISREG(st.st_mode):
                    what = self.file_sum(rel, st)
                elif stat.S_ISLNK(st.st_mode):
                    what = self.readlink(rel)
                mode = f"{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}"
                lines.append(f"{rel}\0{mode}\0{what}\n".encode())
        return sha256_bytes(b"".join(lines))

    def save_sums(self) -> None:
        """Remember the content hashes (atomic write; other contexts' entries kept)."""
        if not self._dirty or self.sums_file is None or self._sums is None:
            return
        try:
            everything = json.loads(self.sums_file.read_text())
        except (FileNotFoundError, ValueError):
            everything = {}
        live = {k: v for k, v in self._sums.items() if self.lstat(k) is not None}
        everything[str(self.root)] = live
        files.write_atomic(self.sums_file, json.dumps(everything).encode())
        self._dirty = False


__all__ = ["Context", "Ignore", "Tree", "follow_in_scope"]
