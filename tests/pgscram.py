"""A throwaway PostgreSQL server that checks passwords (``scram-sha-256`` on TCP), for tests
of authentication failures: the shared test server trusts every connection from 127.0.0.1,
so a wrong password cannot be provoked there.

``start_scram_server()`` runs ``initdb`` and ``pg_ctl`` from the installed PostgreSQL server
binaries (as the ``postgres`` account when we are root, since PostgreSQL refuses root) in a
fresh directory under /tmp, on a free port. It costs about two seconds; use it from one
module-scoped fixture. Without server binaries the fixture skips with the reason (the tests
that need it say what to install).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "right-horse-battery"
"""The password of the ``postgres`` user on the throwaway server."""


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin") + glob.glob("/usr/pgsql-*/bin"))
    usable = [d for d in dirs if os.access(os.path.join(d, "initdb"), os.X_OK)]
    return Path(usable[-1]) if usable else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ScramServer:
    port: int
    basedir: Path
    bindir: Path
    prefix: list[str]

    def url(self, password: str | None = PASSWORD, user: str = "postgres") -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql+asyncpg://{auth}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        pg_ctl = str(self.bindir / "pg_ctl")
        subprocess.run(
            [*self.prefix, pg_ctl, "-D", str(self.basedir / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            cwd="/",
        )
        shutil.rmtree(self.basedir, ignore_errors=True)


def start_scram_server() -> ScramServer | str:
    """A running server, or why there cannot be one (no binaries)."""
    bindir = _bindir()
    if bindir is None:
        return "no PostgreSQL server binaries (initdb) installed: apt-get install postgresql"
    basedir = Path(tempfile.mkdtemp(prefix="saga-test-scram-", dir="/tmp"))
    basedir.chmod(0o755)
    prefix: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(basedir, account.pw_uid, account.pw_gid)
        prefix = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}"]
        prefix.append("--clear-groups")
    pwfile = basedir / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if prefix:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    port = _free_port()

    def run(*args: str) -> None:
        done = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, cwd="/"
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    run(
        str(bindir / "initdb"),
        "-D",
        str(basedir / "data"),
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        f"--pwfile={pwfile}",
        "-E",
        "UTF8",
    )
    options = f"-p {port} -k {basedir} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(basedir / "data"),
        "-o",
        options,
        "-l",
        str(basedir / "log"),
        "-w",
        "start",
    )
    return ScramServer(port=port, basedir=basedir, bindir=bindir, prefix=prefix)
