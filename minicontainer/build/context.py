"""The build context: the files a build may COPY, minus `.dockerignore`, and their
checksums for the layer cache.

`.dockerignore` follows Docker's rules (docs.docker.com/build/building/context,
moby pkg/fileutils PatternMatcher): one pattern a line, `#` comments, paths
cleaned and relative to the context root, `*` and `?` within one path element,
`**` across any number of them, `!` re-includes, the last matching line wins,
and a pattern matching a directory matches everything below it.

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
from pathlib import Path

from .. import files
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
    def read(cls, context: Path) -> Ignore:
        try:
            return cls((context / ".dockerignore").read_text())
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


class Context:
    """A context directory seen through its .dockerignore."""

    def __init__(self, root: str | os.PathLike[str], sums_file: Path | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"build context {root} is not a directory")
        self.ignore = Ignore.read(self.root)
        self.sums_file = sums_file
        self._sums: dict[str, list] | None = None
        self._dirty = False

    # -- which files

    def match(self, pattern: str) -> list[str]:
        """Relative paths (sorted) of the sources a COPY names: a path or a glob, never
        outside the context, never ignored."""
        clean = os.path.normpath(pattern.lstrip("/")) if pattern.strip("/") else "."
        if clean == ".." or clean.startswith("../"):
            raise ValueError(f"{pattern}: outside the build context")
        if glob.has_magic(clean):
            found = self._glob(clean)
        else:
            found = [clean] if os.path.lexists(self.root / clean) else []
        return [f for f in found if f == "." or not self.ignore.ignored(f)]

    def _glob(self, pattern: str) -> list[str]:
        # Per path element, like Go's filepath.Glob; dot files match (Docker's do).
        found = ["."]
        for part in pattern.split("/"):
            nxt = []
            for base in found:
                d = self.root / base
                if not d.is_dir():
                    continue
                names = sorted(os.listdir(d)) if glob.has_magic(part) else [part]
                for name in names:
                    if fnmatch.fnmatchcase(name, part) and os.path.lexists(d / name):
                        nxt.append(name if base == "." else f"{base}/{name}")
            found = nxt
        return sorted(found)

    def walk(self, rel: str) -> list[str]:
        """`rel` and everything below it that is not ignored, parents first, sorted."""
        return [r for r, _ in self.walk_stat(rel)]

    def walk_stat(self, rel: str) -> list[tuple[str, os.stat_result]]:
        """walk() with each entry's lstat (one scandir per directory: a cached
        rebuild of a big context is mostly this)."""
        top = os.path.join(str(self.root), rel)
        out = [(rel, os.lstat(top))]
        if stat.S_ISDIR(out[0][1].st_mode):
            self._scan(top, "" if rel == "." else rel + "/", out)
        return out

    def _scan(self, path: str, prefix: str, out: list[tuple[str, os.stat_result]]) -> None:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            child = prefix + e.name
            if self.ignore.rules and self.ignore.ignored(child):
                continue
            st = e.stat(follow_symlinks=False)
            out.append((child, st))
            if stat.S_ISDIR(st.st_mode):
                self._scan(e.path, child + "/", out)

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
        with open(os.path.join(str(self.root), rel), "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        sums[rel] = [*key, h.hexdigest()]
        self._dirty = True
        return h.hexdigest()

    def checksum(self, rels: list[str]) -> str:
        """One digest for these sources and everything below them."""
        lines: list[bytes] = []
        for top in rels:
            for rel, st in self.walk_stat(top):
                what = ""
                if stat.S_ISREG(st.st_mode):
                    what = self.file_sum(rel, st)
                elif stat.S_ISLNK(st.st_mode):
                    what = os.readlink(os.path.join(str(self.root), rel))
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
        live = {k: v for k, v in self._sums.items() if os.path.lexists(self.root / k)}
        everything[str(self.root)] = live
        files.write_atomic(self.sums_file, json.dumps(everything).encode())
        self._dirty = False


__all__ = ["Context", "Ignore"]
