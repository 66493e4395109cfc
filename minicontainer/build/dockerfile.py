"""Dockerfile parsing and variable substitution.

Follows the Dockerfile reference (docs.docker.com/reference/dockerfile: format,
parser directives, line continuations, environment replacement, exec vs shell
form) and moby's classic parser (moby/buildkit frontend/dockerfile/parser and
shell/lex.go) where the reference is silent.
"""

from __future__ import annotations

import json
import re

from ..errors import UserError

INSTRUCTIONS = (
    "FROM RUN COPY ADD ENV ARG WORKDIR USER LABEL EXPOSE ENTRYPOINT CMD SHELL "
    "STOPSIGNAL VOLUME MAINTAINER"
).split()
UNSUPPORTED = ("ONBUILD", "HEALTHCHECK")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")


class DockerfileError(UserError):
    """A parse or build error naming the file, the line and the instruction."""


class Instruction:
    def __init__(self, keyword: str, rest: str, line: int, original: str = "") -> None:
        self.keyword = keyword  # upper case
        self.rest = rest  # the arguments as written, continuations joined
        self.line = line  # where the instruction starts (1-based)
        self.flags: dict[str, str] = {}  # --from=x, --chown=u:g
        self.original = original

    def __repr__(self) -> str:
        return f"Instruction({self.keyword!r}, {self.rest!r}, line={self.line})"

    def error(self, path: str, message: str) -> DockerfileError:
        return DockerfileError(f"{path}:{self.line}: {self.keyword} {self.rest}: {message}")

    def json_form(self) -> list[str] | None:
        """The exec form (a JSON array of strings) or None for the shell form."""
        if not self.rest.startswith("["):
            return None
        try:
            value = json.loads(self.rest)
        except json.JSONDecodeError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None


def parse(text: str, path: str = "Dockerfile") -> list[Instruction]:
    """The instructions of a Dockerfile. Comment lines (also inside a continued
    instruction) and empty lines are dropped; parser directives are read for
    `escape` only."""
    escape = "\\"
    lines = text.splitlines()
    start = 0
    for i, line in enumerate(lines):  # directives: only at the very top
        m = _DIRECTIVE.match(line)
        if not m:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"{path}:{i + 1}: invalid escape token {m.group(2)!r}")
            escape = m.group(2)
        start = i + 1
    out: list[Instruction] = []
    buf: list[str] = []
    first = 0
    for n in range(start, len(lines)):
        raw = lines[n]
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments never continue a line, nor end one
        if not buf:
            first = n + 1
        body = raw.rstrip()
        if body.endswith(escape) and not body.endswith(escape * 2):
            buf.append(body[:-1])
            continue
        buf.append(raw)
        out.append(_instruction(" ".join(b.strip() for b in buf if b.strip()), first, path))
        buf = []
    if buf:
        out.append(_instruction(" ".join(b.strip() for b in buf if b.strip()), first, path))
    if not out:
        raise DockerfileError(f"{path}: the Dockerfile has no instructions")
    if out[0].keyword not in ("FROM", "ARG"):
        ins = out[0]
        raise ins.error(path, "the first instruction must be FROM (or ARG before FROM)")
    return out


def _instruction(text: str, line: int, path: str) -> Instruction:
    keyword, _, rest = text.partition(" ")
    ins = Instruction(keyword.upper(), rest.strip(), line, original=text)
    if ins.keyword in UNSUPPORTED:
        raise ins.error(path, "not supported by minicontainer build yet")
    if ins.keyword not in INSTRUCTIONS:
        raise ins.error(path, "unknown instruction")
    if ins.keyword in ("COPY", "ADD", "FROM", "RUN"):
        while ins.rest.startswith("--"):
            flag, _, after = ins.rest.partition(" ")
            name, eq, value = flag[2:].partition("=")
            if ins.keyword == "FROM" and name == "platform":
                pass
            elif ins.keyword in ("COPY", "ADD") and name in ("from", "chown"):
                if not eq:
                    raise ins.error(path, f"flag --{name} needs a value")
            else:
                raise ins.error(path, f"unknown flag --{name}")
            ins.flags[name] = value
            ins.rest = after.strip()
    if not ins.rest and ins.keyword not in ("RUN",):
        raise ins.error(path, "requires at least one argument")
    return ins


# ---------------------------------------------------------------- substitution


def _lookup(name: str, env: dict[str, str]) -> str:
    return env.get(name, "")


def _expand_var(text: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    """`text[i] == "$"`: the expansion and the index after it (shell/lex.go)."""
    if i + 1 < len(text) and text[i + 1] == "{":
        end = i + 2
        depth = 1
        while end < len(text) and depth:
            if text[end] == "{":
                depth += 1
            elif text[end] == "}":
                depth -= 1
            end += 1
        if depth:
            raise ValueError(f"missing '}}' in {text[i:]!r}")
        body = text[i + 2 : end - 1]
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?::([-+?])(.*))?$", body, re.S)
        if not m:
            raise ValueError(f"bad substitution ${{{body}}}")
        name, op, word = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name)
        if op == "-":
            return (value if value else substitute(word, env)), end
        if op == "+":
            return (substitute(word, env) if value else ""), end
        if op == "?":
            if not value:
                raise ValueError(f"{name}: {word or 'is not set'}")
        return value or "", end
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :])
    if not m:
        return "$", i + 1
    return _lookup(m.group(0), env), i + 1 + len(m.group(0))


def words(text: str, env: dict[str, str] | None, split: bool = True) -> list[str]:
    """Split on blanks (unless `split` is False), honour quotes and backslashes, and
    expand variables outside single quotes, as the Dockerfile shell lexer does for
    ENV, ARG, LABEL, COPY, WORKDIR... With env None, nothing is expanded."""
    out: list[str] = []
    cur: list[str] = []
    have = False
    i = 0
    quote = ""
    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                cur.append(c)
            i += 1
            continue
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if quote == '"' and nxt not in '"\\$':
                cur.append(c)
            cur.append(nxt)
            have = True
            i += 2
            continue
        if c == "$" and env is not None:
            value, i = _expand_var(text, i, env)
            cur.append(value)
            have = True
            continue
        if quote == '"':
            if c == '"':
                quote = ""
            else:
                cur.append(c)
            i += 1
            continue
        if c in "'\"":
            quote = c
            have = True
            i += 1
            continue
        if split and c in " \t":
            if have or cur:
                out.append("".join(cur))
            cur, have = [], False
            i += 1
            continue
        cur.append(c)
        have = True
        i += 1
    if quote:
        raise ValueError(f"unterminated quote in {text!r}")
    if have or cur:
        out.append("".join(cur))
    return out


def substitute(text: str, env: dict[str, str]) -> str:
    """One word, variables expanded, quotes removed (WORKDIR, USER, FROM, ...)."""
    return "".join(words(text, env, split=False))


def key_values(ins: Instruction, env: dict[str, str] | None, path: str) -> list[tuple[str, str]]:
    """ENV/LABEL/ARG arguments: `K=V K2="v 2"` or the legacy `K V...` (ENV, LABEL)."""
    try:
        parts = words(ins.rest, env)
        if parts and "=" not in parts[0] and ins.keyword in ("ENV", "LABEL"):
            # Legacy form: one pair, the value is the rest of the line.
            key, _, value = ins.rest.partition(" ")
            if not value.strip():
                raise ValueError(f"{ins.keyword} {key}: a value is required (KEY VALUE)")
            return [(key, substitute(value.strip(), env or {}) if env is not None else value)]
    except ValueError as e:
        raise ins.error(path, str(e)) from None
    out = []
    for p in parts:
        key, eq, value = p.partition("=")
        if not key or (not eq and ins.keyword != "ARG"):
            raise ins.error(path, f"{p!r} is not KEY=VALUE")
        out.append((key, value if eq else None))  # type: ignore[arg-type]
    return out
