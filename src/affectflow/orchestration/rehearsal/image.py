"""An image's root filesystem built from its Dockerfile without Docker (no engine, no registry here).

The base image cannot be pulled, so `FROM python:3.11*-slim-bookworm` becomes a Debian root made by
`debootstrap --variant=minbase` from the mirror the host's apt sources name, with Debian's Python
3.11 and venv (the official image builds CPython itself: its patch release differs). Every later
instruction is replayed from the Dockerfile as parsed by dockerfile-parse: RUN in the root under the
Dockerfile's SHELL, COPY from the build context (honouring .dockerignore), ENV / ARG / WORKDIR /
USER / CMD as the image's configuration. Each RUN / COPY / WORKDIR is an overlayfs layer cached
under the cache dir by the hash of everything before it (Docker's layer cache, in effect): a re-run
with the same Dockerfile, context and lock reuses every layer.

Build-time only, never in a layer: the host's PIP_* settings and its wheel folder (PIP_FIND_LINKS,
where CPU torch lies) are given to RUN steps; the host's pip.conf files and CA bundle go into one
layer right above the base, as a build host's would.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from affectflow.orchestration.ir import PipelineError
from affectflow.orchestration.rehearsal.chroot import Bind, Container, _clear, host_pip_env

# What the python:*-slim-bookworm base provides, made from Debian's packages.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3")
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
HOST_PIP_FILES = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", "/etc/xdg/pip/constraints.txt",
                  "/etc/ssl/certs/ca-certificates.crt")
DEFAULT_SHELL = ("/bin/sh", "-c")
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def cache_root() -> Path:
    """Where built layers live (outside the repository): $AFFECTFLOW_REHEARSAL_CACHE or ~/.cache."""
    env = os.environ.get("AFFECTFLOW_REHEARSAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "affectflow" / "rehearsal"


@dataclass(frozen=True)
class Image:
    """A built image: its layers (bottom first) and the configuration its containers start with."""

    key: str
    layers: tuple[Path, ...]
    env: Mapping[str, str]
    workdir: str
    user: str | None
    cmd: tuple[str, ...]
    steps: tuple[dict, ...] = ()  # per instruction: text, seconds, cached


@dataclass
class _State:
    env: dict[str, str] = field(default_factory=lambda: dict(BASE_ENV))
    args: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str | None = None
    shell: tuple[str, ...] = DEFAULT_SHELL
    cmd: tuple[str, ...] = ()

    def vars(self) -> dict[str, str]:
        return {**self.args, **self.env}


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Dockerfile variable substitution: $VAR, ${VAR}, ${VAR:-default}."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        value = variables.get(name, "")
        return value if value or m.group(2) is None else m.group(2)
    return _VAR.sub(sub, text)


def key_values(value: str, variables: Mapping[str, str]) -> dict[str, str]:
    """ENV / ARG pairs: `K=V K2="V 2"` or the legacy `K V`; values expanded against `variables`."""
    tokens = shlex.split(value, posix=True)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: expand(value.split(None, 1)[1] if len(tokens) > 1 else "", variables)}
    out: dict[str, str] = {}
    for t in tokens:
        k, _, v = t.partition("=")
        out[k] = expand(v, {**variables, **out})
    return out


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror the host's apt sources name for the base suite (deb822 or one-line)."""
    files = [*sorted(sources.glob("sources.list.d/*.sources")), sources / "sources.list"]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text()
        for block in text.split("\n\n"):
            fields = dict(line.split(":", 1) for line in block.splitlines()
                          if ":" in line and not line.startswith("#") and not line.startswith(" "))
            if BASE_SUITE in fields.get("Suites", "").split():
                return fields["URIs"].split()[0].strip()
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == BASE_SUITE:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    raise PipelineError(f"no apt source for Debian {BASE_SUITE} under {sources} (needed by debootstrap)")


def _sha(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()


def dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore matching (glob with `**`, a pattern also excludes everything below a match)."""
    parts = rel.split("/")
    out = False
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw[1:] if neg else raw
        pat = pat.strip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or (pat.startswith("**/") and
                                                    fnmatch.fnmatchcase(parts[i - 1], pat[3:])):
                out = not neg
                break
    return out


def context_files(context: Path, sources: list[str], patterns: list[str]) -> list[tuple[Path, str]]:
    """(file, path relative to its COPY source) for every file the sources name; a missing source is an error."""
    out: list[tuple[Path, str]] = []
    for src in sources:
        path = context / src
        if not path.exists() or ignored(src.strip("/"), patterns):
            raise PipelineError(f"COPY {src}: not in the build context {context} (missing or .dockerignore'd)")
        if path.is_file():
            out.append((path, path.name))
            continue
        for f in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
            rel = f.relative_to(context).as_posix()
            if not ignored(rel, patterns):
                out.append((f, f.relative_to(path).as_posix()))
    return out


def _copy(value: str, state: _State, context: Path, patterns: list[str]) -> tuple[str, Callable[[Path], None]]:
    """A COPY's cache key part (the content it copies) and the function that writes it into a layer."""
    tokens = shlex.split(expand(value, state.vars()))
    chown = None
    while tokens and tokens[0].startswith("--"):
        flag = tokens.pop(0)
        if flag.startswith("--chown="):
            chown = flag.split("=", 1)[1]
        else:
            raise PipelineError(f"COPY {flag}: not supported by the rehearsal's image builder")
    *sources, dest = tokens
    if not dest.startswith("/"):
        dest = f"{state.workdir.rstrip('/')}/{dest}"
    files = context_files(context, sources, patterns)
    into_dir = dest.endswith("/") or len(sources) > 1 or (context / sources[0]).is_dir()
    h = hashlib.sha256()
    for f, rel in files:
        h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0" + oct(f.stat().st_mode).encode())
    uid, gid = _ids(chown)

    def write(upper: Path) -> None:
        for f, rel in files:
            target = upper / (dest.strip("/") + "/" + rel if into_dir else dest.strip("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            if chown:
                os.chown(target, uid, gid)
                for parent in target.parents:
                    if parent == upper or parent == upper / dest.strip("/").split("/")[0]:
                        break
                    os.chown(parent, uid, gid)
        if chown and into_dir:
            os.chown(upper / dest.strip("/"), uid, gid)
    return h.hexdigest(), write


def _ids(chown: str | None) -> tuple[int, int]:
    if not chown:
        return 0, 0
    user, _, group = chown.partition(":")
    if not user.isdigit() or (group and not group.isdigit()):
        raise PipelineError(f"COPY --chown={chown}: the rehearsal supports numeric ids only")
    return int(user), int(group or user)


class Builder:
    """Builds one Dockerfile into cached layers; `log` receives every step's output."""

    def __init__(self, dockerfile: Path, context: Path, *, cache: Path | None = None,
                 build_args: Mapping[str, str] | None = None, log: Path, echo: Callable[[str], None] = print):
        self.dockerfile, self.context = dockerfile, context
        self.cache = (cache or cache_root()) / "layers"
        self.build_args = dict(build_args or {})
        self.log, self.echo = log, echo

    def build(self) -> Image:
        from dockerfile_parse import DockerfileParser

        with open(self.dockerfile, "rb") as f:
            parser = DockerfileParser(fileobj=f, env_replace=False)
            structure = parser.structure
        patterns = dockerignore(self.context)
        state = _State()
        layers: list[Path] = []
        steps: list[dict] = []
        key = ""
        for ins in structure:
            name, value = ins["instruction"], ins["value"]
            if name == "COMMENT":
                continue
            text = f"{name} {value}"
            t0 = time.monotonic()
            cached = True
            if name == "FROM":
                # the Debian stand-in depends on the suite and packages only (not on the tag or digest it replaces)
                layer, cached = self._layer(_sha("base", BASE_SUITE, *BASE_PACKAGES), self._debootstrap)
                key = _sha("FROM", value)
                layers = [layer]
                host_key = _sha(key, "host-pip", *(Path(p).read_bytes() if Path(p).is_file() else b""
                                                   for p in HOST_PIP_FILES))
                layer, _ = self._layer(host_key, self._host_files)
                layers.append(layer)
                key = host_key
            elif name == "ARG":
                for k, v in key_values(value, state.vars()).items():
                    state.args[k] = self.build_args.get(k, v)
                key = _sha(key, text, json.dumps(state.args, sort_keys=True))
            elif name == "ENV":
                state.env.update(key_values(value, state.vars()))
                key = _sha(key, text)
            elif name == "SHELL":
                state.shell = tuple(json.loads(value))
                key = _sha(key, text)
            elif name == "WORKDIR":
                state.workdir = expand(value, state.vars())
                key = _sha(key, text)
                wd = state.workdir
                layer, cached = self._layer(key, lambda up, wd=wd: (up / wd.strip("/")).mkdir(parents=True, exist_ok=True))
                layers.append(layer)
            elif name == "USER":
                state.user = expand(value, state.vars())
                key = _sha(key, text)
            elif name == "CMD":
                state.cmd = tuple(json.loads(value)) if value.startswith("[") else (*state.shell, value)
            elif name == "COPY":
                content, write = _copy(value, state, self.context, patterns)
                key = _sha(key, text, content)
                layer, cached = self._layer(key, write)
                layers.append(layer)
            elif name == "RUN":
                key = _sha(key, text)
                env = {**host_pip_env(), **state.vars()}
                run = Container(layers=tuple(layers), env=env, command=(*state.shell, value),
                                binds=self._build_binds(), user=_userspec(state.user), cwd=state.workdir)
                layer, cached = self._layer(key, lambda up, run=run, value=value: self._run(run, up, value))
                layers.append(layer)
            elif name in ("LABEL", "EXPOSE", "ENTRYPOINT", "HEALTHCHECK", "STOPSIGNAL", "VOLUME"):
                key = _sha(key, text)
            else:
                raise PipelineError(f"{self.dockerfile}: instruction {name} is not supported by the rehearsal")
            seconds = time.monotonic() - t0
            steps.append({"instruction": text[:100], "seconds": round(seconds, 1), "cached": cached})
            if name in ("FROM", "RUN", "COPY"):
                self.echo(f"  {'cached' if cached else f'{seconds:6.1f} s'}  {text[:96]}")
        return Image(key=key, layers=tuple(layers), env=dict(state.env), workdir=state.workdir,
                     user=_userspec(state.user), cmd=state.cmd, steps=tuple(steps))

    def _layer(self, key: str, make: Callable[[Path], None]) -> tuple[Path, bool]:
        final = self.cache / key[:32]
        if (final / ".done").is_file():
            return final / "upper", True
        tmp = self.cache / f"{key[:32]}.tmp"
        _clear(tmp)
        (tmp / "upper").mkdir(parents=True)
        make(tmp / "upper")
        (tmp / ".done").write_text(key + "\n")
        _clear(final)
        tmp.rename(final)
        return final / "upper", False

    def _run(self, container: Container, upper: Path, value: str) -> None:
        container.upper = upper
        container.scratch = self.cache
        with open(self.log, "ab") as out:
            out.write(f"\n### RUN {value}\n".encode())
        rc = container.run(self.log)
        if rc != 0:
            raise PipelineError(f"RUN {value[:120]} exited {rc} (log: {self.log})")

    def _build_binds(self) -> tuple[Bind, ...]:
        links = os.environ.get("PIP_FIND_LINKS", "")
        return tuple(Bind(Path(p), p, read_only=True) for p in links.split() if p.startswith("/") and Path(p).is_dir())

    def _debootstrap(self, upper: Path) -> None:
        if shutil.which("debootstrap") is None:
            raise PipelineError("debootstrap not found: apt-get install debootstrap")
        cmd = ["nice", "-n", "10", "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
               BASE_SUITE, str(upper), apt_mirror()]
        with open(self.log, "ab") as out:
            out.write(f"\n### {' '.join(cmd)}\n".encode())
            out.flush()
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0:
            raise PipelineError(f"debootstrap exited {rc} (log: {self.log})")
        # debootstrap's apt cache is not part of a slim image
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (upper / d).glob("*"):
                if f.is_file():
                    f.unlink()

    def _host_files(self, upper: Path) -> None:
        for p in HOST_PIP_FILES:
            if Path(p).is_file():
                target = upper / p.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, target)


def _userspec(user: str | None) -> str | None:
    """Dockerfile USER as chroot's --userspec (numeric uid[:gid]; names resolve inside the root)."""
    if not user:
        return None
    return user if ":" in user else f"{user}:{user}"
