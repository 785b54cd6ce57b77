"""``bids-connectome-atlases``: get the TemplateFlow files a configuration needs, ahead of time.

Run where a network exists (a login node, a Docker build); the app itself never
downloads (the container runs with ``--network=none``)::

    bids-connectome-atlases fetch CONFIG [CONFIG ...] --to DIR     # every TemplateFlow query
    bids-connectome-atlases fetch --query tpl-MNI152NLin2009cAsym_atlas-Schaefer2018_desc-400Parcels7Networks_res-2_dseg --to DIR
    bids-connectome-atlases list CONFIG [--templateflow-home DIR]  # what is needed, what is there

``DIR`` becomes (or stays) a TemplateFlow home: ``DIR/tpl-<T>/<TemplateFlow's file name>``;
run the app with ``TEMPLATEFLOW_HOME=DIR``. Only the files the queries name are written
(image, ``_dseg.tsv`` / ``_probseg.tsv`` table, ``.json`` sidecar), each atomically.

Which files a query names is decided against TemplateFlow's index, the list of every
file of the archive that the ``templateflow`` client ships (its "skeleton", unpacked once
into a temporary folder; ``--update-index`` takes the newest one from GitHub), merged with
what ``DIR`` already holds. Files are downloaded from TemplateFlow's S3 bucket, the source
the client itself uses.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from .atlases import (
    FETCH_COMMAND,
    S3_ROOT,
    AtlasRequest,
    _File,
    _NoMatch,
    check_space,
    default_templateflow_home,
    find_templateflow,
    parse_request,
    resolve_atlas,
    templateflow_index,
    templateflow_request,
)
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, AppError, ConfigError
from .vocabulary import BUILTIN_COORDINATES

DEFAULT_SPACE = "MNI152NLin2009cAsym"  # the configuration's default BOLD space


class DownloadError(AppError):
    """A file could not be downloaded (the message names the URL)."""

    exit_code = EXIT_FAILURE


# --- configuration ----------------------------------------------------------------------------


def read_config(spec: str | Path) -> tuple[dict[str, Any], Path]:
    """The YAML mapping of a configuration file or preset name, and the file's path.

    Read as plain YAML (not validated): ``fetch`` needs only the atlas entries, and works
    before the configuration schema knows every key.
    """
    import yaml

    path = Path(spec)
    if not path.is_file():
        from .config import list_presets, packaged_config

        if str(spec) in list_presets():
            path = packaged_config(str(spec))
        else:
            raise ConfigError(f"configuration file not found: {spec}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the configuration {path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration {path}: the top level must be a mapping")
    return data, path


def atlas_entries(data: dict[str, Any], base_dir: Path) -> list[dict[str, Any]]:
    """The ``atlases`` entries, relative paths taken from ``base_dir`` (as the app does)."""
    out = []
    for entry in data.get("atlases") or []:
        if not isinstance(entry, dict):
            continue
        entry = dict(entry)
        for key in ("image", "labels", "mask", "dataset", "coordinates"):
            value = entry.get(key)
            if value is None or (
                key == "coordinates" and str(value).lower() in BUILTIN_COORDINATES
            ):
                continue
            p = Path(str(value)).expanduser()
            entry[key] = str(p if p.is_absolute() else (base_dir / p).resolve())
        out.append(entry)
    return out


def config_requests(spec: str | Path, space: str | None = None) -> list[tuple[str, AtlasRequest]]:
    """``(atlas name, request)`` of every TemplateFlow entry of a configuration."""
    data, path = read_config(spec)
    bold_space = space or data.get("space") or DEFAULT_SPACE
    out = []
    for entry in atlas_entries(data, path.resolve().parent):
        if entry.get("templateflow") is None:
            continue
        name = str(entry.get("name"))
        try:
            request = templateflow_request(
                entry["templateflow"],
                str(entry.get("kind")),
                str(bold_space),
                data.get("res"),
                entry.get("space"),
            )
        except ConfigError as err:
            raise ConfigError(f"{path}: atlases.{name}.templateflow: {err}") from None
        out.append((name, request))
    return out


# --- TemplateFlow's index and downloads -------------------------------------------------------

_INDEX_HOME: Path | None = None


def _client(root: Path):
    """A ``TemplateFlowClient`` on ``root`` (S3 mode), imported without touching the
    user's TemplateFlow home: importing ``templateflow`` unpacks its skeleton into
    ``$TEMPLATEFLOW_HOME``, so the variable points to ``root`` while it is imported."""
    saved = os.environ.get("TEMPLATEFLOW_HOME")
    os.environ["TEMPLATEFLOW_HOME"] = str(root)
    try:
        from templateflow import TemplateFlowClient
    except ImportError:
        raise ConfigError(
            f"{FETCH_COMMAND} fetch needs the templateflow package: pip install templateflow"
        ) from None
    finally:
        if saved is None:
            os.environ.pop("TEMPLATEFLOW_HOME", None)
        else:
            os.environ["TEMPLATEFLOW_HOME"] = saved
    return TemplateFlowClient(root=root, use_datalad=False)


def index_home(update: bool = False) -> Path:
    """A temporary TemplateFlow home holding only the client's skeleton (every file of the
    archive, mostly as empty placeholders), unpacked once per process."""
    global _INDEX_HOME
    if _INDEX_HOME is None or update:
        tmp = Path(tempfile.mkdtemp(prefix="templateflow-index-"))
        atexit.register(shutil.rmtree, tmp, True)
        client = _client(tmp / "home")
        client.cache.ensure()  # from the package's own zip: no network
        if update:
            try:
                client.cache.update(local=False, overwrite=False, silent=True)
            except Exception as err:  # noqa: BLE001 - any network failure: keep the shipped one
                print(f"could not update TemplateFlow's index ({err}); using the shipped one")
        _INDEX_HOME = tmp / "home"
    return _INDEX_HOME


def remote_index(template: str, update: bool = False) -> list[_File]:
    """Every file TemplateFlow has for ``tpl-<template>`` (sizes unknown)."""
    return [
        _File(f.rel, f.entities, f.suffix, f.extension, -1)
        for f in templateflow_index(index_home(update), template)
    ]


def _ssl_context() -> ssl.SSLContext:
    """Certificates: ``$SSL_CERT_FILE`` (a proxy's CA), else certifi's (a slim image has
    no system CA bundle), else the system's."""
    cafile = os.environ.get("SSL_CERT_FILE")
    if not cafile:
        try:
            import certifi  # with requests, a dependency of templateflow

            cafile = certifi.where()
        except ImportError:
            cafile = None
    return ssl.create_default_context(cafile=cafile)


def download(url: str, dest: Path, timeout: float = 60.0) -> int:
    """Download ``url`` to ``dest`` atomically (a ``.part`` file, then renamed); bytes written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    try:
        with (
            urllib.request.urlopen(url, timeout=timeout, context=_ssl_context()) as response,
            open(part, "wb") as fh,
        ):
            expected = int(response.headers.get("Content-Length") or -1)
            shutil.copyfileobj(response, fh, 1 << 20)
            written = fh.tell()
    except (urllib.error.URLError, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url}: {err}") from None
    if expected >= 0 and written != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url}: got {written} of {expected} bytes")
    os.replace(part, dest)
    return written


def _merged(remote: Iterable[_File], local: Iterable[_File]) -> list[_File]:
    files = {f.rel: f for f in remote}
    files.update({f.rel: f for f in local})
    return [files[k] for k in sorted(files)]


def fetch_requests(
    requests: Iterable[AtlasRequest],
    dest: Path | str,
    *,
    update_index: bool = False,
    out: TextIO | None = None,
) -> list[Path]:
    """Download into the TemplateFlow home ``dest`` every file the requests name.

    Files already there (not empty) are kept. Returns the files of all requests.
    Raises :class:`ConfigError` for a request TemplateFlow does not have (or that names
    several files) and :class:`DownloadError` when a download fails.
    """
    dest = Path(dest).expanduser().absolute()
    out = out or sys.stdout
    got: list[Path] = []
    for request in requests:
        where = f"TemplateFlow's index and {dest / f'tpl-{request.template}'}"
        files = _merged(
            remote_index(request.template, update_index), templateflow_index(dest, request.template)
        )
        try:
            wanted = find_templateflow(request, files, where)
        except _NoMatch as err:
            hint = "" if update_index else " (or try --update-index for TemplateFlow's newest list)"
            raise ConfigError(f"{request.stem()}: {err}{hint}") from None
        for f in wanted:
            if f is None:
                continue
            target = dest / f.rel
            if target in got:
                continue
            got.append(target)
            if _size(target) > 0:
                print(f"present  {f.rel}", file=out)
                continue
            n = download(f"{S3_ROOT}/{quote(f.rel.as_posix())}", target)
            print(f"fetched  {f.rel} ({n / 1e6:.1f} MB)", file=out)
    return got


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --- commands ---------------------------------------------------------------------------------


def _fetch(args: argparse.Namespace) -> int:
    requests: list[AtlasRequest] = []
    for spec in args.configs:
        found = config_requests(spec, args.space)
        if not found:
            print(f"{spec}: no TemplateFlow atlas (nothing to fetch)")
        requests += [r for _, r in found]
    requests += [parse_request(q) for q in args.query or []]
    if not requests and not args.configs:
        raise ConfigError("give a configuration file or --query (see --help)")
    fetch_requests(requests, args.to, update_index=args.update_index)
    if requests:
        print(f"done: run with TEMPLATEFLOW_HOME={Path(args.to).expanduser().absolute()}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    home = (
        Path(args.templateflow_home).expanduser().absolute()
        if args.templateflow_home
        else default_templateflow_home()
    )
    print(f"TemplateFlow home: {home}")
    ok = True
    for spec in args.configs:
        data, path = read_config(spec)
        bold_space = str(args.space or data.get("space") or DEFAULT_SPACE)
        print(f"{path} (BOLD space {bold_space}):")
        for entry in atlas_entries(data, path.resolve().parent):
            name = str(entry.get("name"))
            try:
                resolved = resolve_atlas(
                    entry,
                    bold_space=bold_space,
                    templateflow_home=home,
                    bold_res=data.get("res"),
                    base_dir=path.resolve().parent,
                    config_path=path,
                )
            except ConfigError as err:
                ok = False
                print(f"  {name}: MISSING\n    " + str(err).replace("\n", "\n    "))
                continue
            where = resolved.image or entry.get("coordinates")
            template = resolved.template or (
                "world coordinates" if resolved.kind == "spheres" else "unknown template"
            )
            missing = [p for p in resolved.files if not Path(p).is_file()]
            status = "present" if not missing else "MISSING " + ", ".join(map(str, missing))
            ok = ok and not missing
            print(f"  {name}: {status} [{resolved.source}, {template}] {where}")
            if resolved.labels is not None:
                print(f"    labels: {resolved.labels}")
            try:
                note = check_space(
                    resolved, bold_space, allow_mismatch=bool(entry.get("allow_space_mismatch"))
                )
            except ConfigError as err:
                ok = False
                note = f"ERROR {err}"
            if note:
                print(f"    space: {note}")
    return EXIT_OK if ok else EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits with 2; BIDS-Apps use 64
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=FETCH_COMMAND,
        description="Fetch the TemplateFlow atlases a bids-connectome configuration names "
        "(where a network exists), or list what it needs and whether it is present.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    f = sub.add_parser(
        "fetch",
        help="download every TemplateFlow file the configurations need into a folder",
        description="Download every TemplateFlow file the configurations (and --query) need "
        "into DIR, laid out as a TemplateFlow home; run the app with TEMPLATEFLOW_HOME=DIR.",
    )
    f.add_argument("configs", nargs="*", metavar="CONFIG", help="YAML file or preset name")
    f.add_argument(
        "--query",
        action="append",
        metavar="QUERY",
        help="a TemplateFlow atlas as tpl-<T>_atlas-<A>[_desc-<D>][_res-<N>][_cohort-<C>]_"
        "<dseg|probseg> (repeatable)",
    )
    f.add_argument("--to", required=True, type=Path, metavar="DIR", help="TemplateFlow home")
    f.add_argument("--space", help="BOLD space (overrides the configuration's `space`)")
    f.add_argument(
        "--update-index",
        action="store_true",
        help="take TemplateFlow's newest file list from GitHub (else the one templateflow ships)",
    )
    f.set_defaults(run=_fetch)
    ls = sub.add_parser(
        "list",
        help="what the configurations need, and whether it is present locally",
        description="Resolve every atlas of the configurations as the app would (offline) "
        "and print where it comes from, whether it is present and the space check. "
        "Exit 0 when all is well, 64 otherwise.",
    )
    ls.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML file or preset name")
    ls.add_argument(
        "--templateflow-home",
        metavar="DIR",
        help="TemplateFlow home (default: $TEMPLATEFLOW_HOME, else ~/.cache/templateflow)",
    )
    ls.add_argument("--space", help="BOLD space (overrides the configuration's `space`)")
    ls.set_defaults(run=_list)
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``bids-connectome-atlases`` (exit codes: 0; 1 a download failed;
    64 usage or configuration error, or ``list`` found something missing)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except AppError as err:
        print(f"{FETCH_COMMAND}: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = [
    "DownloadError",
    "atlas_entries",
    "config_requests",
    "download",
    "fetch_requests",
    "index_home",
    "main",
    "read_config",
    "remote_index",
]
