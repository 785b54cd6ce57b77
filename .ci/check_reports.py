#!/usr/bin/env python3
"""Open the HTML reports of an OUTPUT_DIR in headless Chromium and check them like a reader would.

    python .ci/check_reports.py OUTPUT_DIR [--screenshots DIR] [--chromium PATH] [--no-group]

For every ``OUTPUT_DIR/sub-*.html`` and ``OUTPUT_DIR/group/**/report.html`` (at least one of
each is required, ``--no-group`` drops the second), load the page from the file system and
fail on:

* a console error, an uncaught exception or an error logged by the browser (a missing file
  shows up here as ``net::ERR_FILE_NOT_FOUND``);
* a request leaving the file system (anything but ``file:``, ``data:``, ``about:``): the
  reports must open offline;
* an image that did not load (``naturalWidth`` 0) or a page that is blank (little text);
* a figure the records say the page shows but the page has no ``<img>`` for (it was missing
  when the page was written), or an ``<img>`` of the figures folder that no record lists: a
  participant page against every current ``sub-<L>/figures/*_figures.json`` /
  ``*_unitfigures.json`` (current: its ``ConfigurationHash`` is that of the run's ``_qc.json``,
  as the report decides), a group page against ``figures/.inputs.json`` (the figures drawn);

and save a full-page screenshot per report (``--screenshots``, default
``OUTPUT_DIR/../report-screenshots``). Chromium is driven through the DevTools protocol over
``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-separated JSON): no extra Python
package. Prints one line per report and ``reports: N passed, M failed``; exit 1 on a failure.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome-error:")
WIDTH = 1280
MAX_HEIGHT = 16000
MIN_TEXT = 200  # characters of visible text below which a page counts as blank


class Browser:
    """A Chromium process and a minimal DevTools-protocol client over its pipe."""

    def __init__(self, executable: str, log_path: Path):
        self.profile = tempfile.mkdtemp(prefix="check-reports-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Chromium reads commands on fd 3 and answers on fd 4: the shell maps the pipes there
        command = [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        script = f'exec "$@" 3<&{to_child_r} 4>&{from_child_w}'
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", script, "sh", *command],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(to_child_r, from_child_w),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict:
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                self.events.append(reply)

    def _read(self, deadline: float) -> list[dict]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
                self._buf += chunk
            elif self.proc.poll() is not None:
                raise RuntimeError(f"Chromium exited (code {self.proc.returncode})")
        out = []
        while b"\0" in self._buf:
            raw, self._buf = self._buf.split(b"\0", 1)
            out.append(json.loads(raw))
        return out

    def pump(self, seconds: float) -> None:
        """Collect events for a while."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.events.extend(self._read(deadline))
            except TimeoutError:
                return

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


FIGURE_EXTENSIONS = (".png", ".svg")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _files(record) -> list[str]:
    """Every figure file (``"File"`` value) named anywhere in a figures record."""
    if isinstance(record, dict):
        found = [
            v
            for k, v in record.items()
            if k == "File" and isinstance(v, str) and v.endswith(FIGURE_EXTENSIONS)
        ]
        return found + [f for v in record.values() for f in _files(v)]
    if isinstance(record, list):
        return [f for v in record for f in _files(v)]
    return []


def _desc(name: str) -> str | None:
    return next((p[5:] for p in name.split("_") if p.startswith("desc-")), None)


def recorded_figures(out: Path, page: Path) -> dict[str, str]:
    """``{<img> src the page must show: the record that lists it}`` for one report page.

    Participant page ``sub-<L>.html``: the figures listed by the run records
    (``sub-<L>/figures/<run>_desc-<D>_figures.json``) whose configuration is that of the
    run's ``<run>_desc-<D>_qc.json``, and by the session / subject records
    (``*_unitfigures.json``) of a configuration of one of those runs. Group page: the
    figures of ``figures/.inputs.json``.
    """
    if page.name == "report.html":
        drawn = _read_json(page.parent / "figures" / ".inputs.json")
        return {f"figures/{name}": ".inputs.json" for name in drawn}
    sub = page.stem
    folder = out / sub / "figures"
    qc_hashes: dict[str, str] = {}  # "<run>_desc-<D>" -> ConfigurationHash
    for qc in [*out.glob(f"{sub}/func/*_qc.json"), *out.glob(f"{sub}/ses-*/func/*_qc.json")]:
        qc_hashes[qc.name.removesuffix("_qc.json")] = _read_json(qc).get("ConfigurationHash")
    by_desc: dict[str | None, set] = {}
    for stem, value in qc_hashes.items():
        by_desc.setdefault(_desc(stem), set()).add(value)
    expected: dict[str, str] = {}
    for path in sorted(folder.glob("*_figures.json")):
        record = _read_json(path)
        stem = path.name.removesuffix("_figures.json")
        if stem in qc_hashes and record.get("ConfigurationHash") == qc_hashes[stem]:
            expected.update({f"{sub}/figures/{f}": path.name for f in _files(record)})
    for path in sorted(folder.glob("*_unitfigures.json")):
        record = _read_json(path)
        if record.get("ConfigurationHash") in by_desc.get(_desc(path.name), set()):
            expected.update({f"{sub}/figures/{f}": path.name for f in _files(record)})
    return expected


def compare_figures(out: Path, page: Path, shown: list[str]) -> list[str]:
    """Problems of the page's ``<img>`` sources against what the figure records list."""
    expected = recorded_figures(out, page)
    folder = "figures/" if page.name == "report.html" else f"{page.stem}/figures/"
    problems = [
        f"figure listed in {record} not shown (no <img>): {src}"
        for src, record in sorted(expected.items())
        if src not in shown
    ]
    problems += [
        f"<img> of a figure no current record lists: {src}"
        for src in sorted(set(shown))
        if src.startswith(folder) and src not in expected
    ]
    return problems


CHECK_JS = """
(() => {
  const imgs = Array.from(document.images).map(i => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}));
  const text = document.body ? document.body.innerText.trim() : '';
  return JSON.stringify({images: imgs, text: text.length, title: document.title,
    height: document.documentElement.scrollHeight});
})()
"""


def check_page(
    browser: Browser,
    path: Path,
    screenshot: Path,
    max_height: int = MAX_HEIGHT,
    output_dir: Path | None = None,
) -> list[str]:
    """Load one report; return the problems found (empty: the page is fine).

    With ``output_dir``, the page's images are also compared with the figure records
    (:func:`compare_figures`).
    """
    problems: list[str] = []
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session=session)
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    browser.events.clear()
    url = path.resolve().as_uri()
    nav = browser.send("Page.navigate", {"url": url}, session=session)
    if nav.get("errorText"):
        problems.append(f"navigation failed: {nav['errorText']}")
    deadline = time.monotonic() + 60
    while not any(
        e.get("method") == "Page.loadEventFired" and e.get("sessionId") == session
        for e in browser.events
    ):
        if time.monotonic() > deadline:
            problems.append("the page did not finish loading in 60 s")
            break
        browser.pump(0.2)
    browser.pump(0.5)  # late console messages
    result = browser.send(
        "Runtime.evaluate", {"expression": CHECK_JS, "returnByValue": True}, session=session
    )
    info = json.loads(result["result"]["value"])
    for event in browser.events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"console error: {args}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            problems.append(f"browser error: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            req = params["request"]["url"]
            if not req.startswith(LOCAL_SCHEMES):
                problems.append(f"request outside the file system: {req}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"failed to load: {params.get('errorText')}")
    missing = [i["src"] for i in info["images"] if not i["complete"] or i["width"] == 0]
    problems += [f"image did not load: {src}" for src in missing]
    if output_dir is not None:
        problems += compare_figures(output_dir, path, [i["src"] for i in info["images"]])
    if info["text"] < MIN_TEXT:
        problems.append(f"blank page: {info['text']} characters of text")
    height = min(max_height, max(900, int(info["height"])))
    browser.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    browser.pump(0.3)
    shot = browser.send(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": False},
        session=session,
        timeout=60,
    )
    data = base64.b64decode(shot["data"])
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(data)
    if len(data) < 20_000:
        problems.append(f"screenshot is nearly empty ({len(data)} bytes)")
    browser.send("Target.closeTarget", {"targetId": target})
    n_img = len(info["images"])
    print(
        f"{'ok' if not problems else 'FAIL'}: {path} ({n_img} images, {info['text']} characters, "
        f"{info['height']} px high) -> {screenshot}"
    )
    return problems


def find_chromium(given: str | None) -> str:
    for candidate in ([given] if given else []) + [
        "/usr/lib/chromium/chromium",
        "/usr/bin/chromium",
        "chromium",
        "chromium-browser",
        "google-chrome",
    ]:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    sys.exit("check_reports: Chromium not found (Debian: apt-get install -y chromium)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("--screenshots", type=Path, default=None)
    ap.add_argument("--chromium", default=None)
    ap.add_argument("--no-group", action="store_true", help="do not require a group report")
    ap.add_argument(
        "--max-height",
        type=int,
        default=MAX_HEIGHT,
        help=f"screenshot height limit in pixels (default {MAX_HEIGHT})",
    )
    args = ap.parse_args(argv)
    out = args.output_dir.resolve()
    shots = (args.screenshots or out.parent / "report-screenshots").resolve()
    participants = sorted(out.glob("sub-*.html"))
    groups = sorted(out.glob("group/**/report.html"))
    failures: list[tuple[Path, str]] = []
    if not participants:
        failures.append((out, "no participant report (sub-*.html)"))
    if not groups and not args.no_group:
        failures.append((out, "no group report (group/report.html)"))
    reports = participants + groups
    passed = 0
    if reports:
        shots.mkdir(parents=True, exist_ok=True)
        browser = Browser(find_chromium(args.chromium), shots / "chromium.log")
        try:
            for path in reports:
                rel = path.relative_to(out).with_suffix("").as_posix().replace("/", "_")
                try:
                    problems = check_page(browser, path, shots / f"{rel}.png", args.max_height, out)
                except Exception as err:  # a crashed browser is a failure, not a traceback
                    problems = [f"{type(err).__name__}: {err}"]
                    print(f"FAIL: {path}")
                failures += [(path, p) for p in problems]
                passed += not problems
        finally:
            browser.close()
    for path, problem in failures:
        print(f"  {path.name}: {problem}", file=sys.stderr)
    n_failed = len({p for p, _ in failures})
    print(f"reports: {passed} passed, {n_failed} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
