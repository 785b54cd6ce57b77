"""Reports (bids_app.report): per-run figures from the in-memory record, the participant and
group HTML from the files on disk.

The demo is processed the way the worker does it (compute_run -> write_run -> commit_run ->
run_figures) for two denoising labels into one OUTPUT_DIR, then the participant reports, the
group level and the group report are made.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bids_app import naming, report, state
from bids_app.cli import main
from bids_app.config import load_config
from bids_app.demo import DemoSpec, build_demo
from bids_app.discover import Selection, find_runs
from bids_app.engine import UnitTask, compute_run, compute_unit
from bids_app.group import run_group
from bids_app.participant import load_atlases, make_context, write_dataset_files
from bids_app.write import write_run, write_unit

PIL = pytest.importorskip("PIL.Image", reason="matplotlib (and Pillow) are needed for reports")
pytest.importorskip("jinja2", reason="jinja2 is needed for reports")

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / ".ci" / "check_reports.py"
SUBJECTS = ("01", "02", "03")


def _variant(base: Path, dest: Path, name: str, extra: str, **replace: str) -> Path:
    text = base.read_text().replace("name: simple", f"name: {name}")
    text = text.replace("strategy: simple", "strategy: simple" + extra)
    for old, new in replace.items():
        text = text.replace(old, new)
    dest.write_text(text)
    return dest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    dest = tmp_path_factory.mktemp("report-demo")
    simple = build_demo(dest, DemoSpec(n_subjects=3, n_sessions=1, n_runs=1, n_volumes=50, seed=5))
    gsr = _variant(simple, dest / "gsr.yaml", "gsr", "\n  global_signal: basic")
    return dest / "fmriprep", simple, gsr


def process(bids: Path, out: Path, config_path: Path, participants: list[str] | None = None):
    """What a worker does per run, plus the dataset files; returns (records, context)."""
    config = load_config(config_path)
    ctx = make_context(config, out, bids)
    load_atlases(ctx)
    records = []
    for run in find_runs(bids, Selection(space=config.space, participants=participants)):
        record = compute_run(run, ctx)
        files = write_run(record, run, ctx)
        state.commit_run(run.entities, ctx, "test", files)
        record.figures = report.run_figures(record, ctx)
        records.append(record)
    write_dataset_files(ctx)
    return records, ctx


@pytest.fixture(scope="module")
def outputs(demo, tmp_path_factory):
    bids, simple, gsr = demo
    out = tmp_path_factory.mktemp("report-out") / "out"
    made = {}
    report.warm_up()
    for path in (simple, gsr):
        records, ctx = process(bids, out, path)
        for sub in SUBJECTS:
            report.participant_report(out, sub, ctx.config)
        result = run_group(out, ctx.config)
        report.group_report(out, result.folder, ctx.config)
        made[ctx.desc] = (records, ctx)
    return out, made


def _png(path: Path) -> np.ndarray:
    with PIL.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def _figures_json(out: Path, record, desc: str) -> dict:
    ents = naming.source_entities(record.entities)
    path = (
        out
        / f"sub-{ents['sub']}"
        / "figures"
        / naming.build_name({**ents, "desc": desc}, "figures", ".json")
    )
    return json.loads(path.read_text())


# --- per-run figures ------------------------------------------------------------------------


def test_run_figures_are_real_images(outputs):
    out, made = outputs
    records, ctx = made["simple"]
    for record in records:
        names = {Path(p).name for p in record.figures}
        data = _figures_json(out, record, "simple")
        assert data["ConfigurationHash"] == ctx.config_hash
        pngs = [p for p in record.figures if p.suffix == ".png"]
        # carpet + regressors + (matrix + connectome) per atlas: every demo atlas has centres
        assert len(pngs) == 2 + 2 * len(record.atlases)
        for path in pngs:
            assert path.stat().st_size > 2000, path
            img = _png(path)
            assert img.shape[0] > 100 and img.shape[1] > 200
            assert img.std() > 20, f"{path.name} is (nearly) uniform"
        for atlas in data["Atlases"]:
            assert atlas["Matrix"]["File"] in names and atlas["Connectome"]["File"] in names
            n = len(next(a for a in record.atlases if a.name == atlas["Name"]).regions)
            assert min(10, n * (n - 1) // 2) <= atlas["Connectome"]["Edges"] <= 150
        assert data["Figures"]["Regressors"]["Regressors"] == len(
            record.provenance["ConfoundRegressors"]
        )


def test_carpet_has_one_row_per_region_and_blank_removed_volumes(outputs):
    from bids_app.report import _mpl
    from bids_app.report.figures import atlas_orderings, carpet_matrices

    out, made = outputs
    records, ctx = made["simple"]
    record = records[0]
    carpet = _figures_json(out, record, "simple")["Figures"]["Carpet"]
    n_regions = sum(len(a.regions) for a in record.atlases)
    assert carpet["Rows"] == n_regions and carpet["Columns"] == record.n_volumes
    x0, top, width, height = carpet["Panel"]
    k = carpet["PixelsPerRow"]
    assert k >= 1 and height == n_regions * k  # pixel-exact: k pixel rows per region
    assert width == record.n_volumes * carpet["PixelsPerVolume"]
    img = _png(out / f"sub-{record.entities['sub']}" / "figures" / carpet["File"])
    panel = img[top : top + height, x0 : x0 + width]
    before, after, _ = carpet_matrices(
        record, atlas_orderings(ctx, [a.name for a in record.atlases])
    )
    assert before.shape == (n_regions, record.n_volumes)
    expected = _mpl.colorize(
        np.repeat(np.repeat(before, int(k), 0), int(carpet["PixelsPerVolume"]), 1),
        "gray",
        -2.5,
        2.5,
    )[..., :3]
    same_rows = (panel == expected).all(axis=(1, 2)).mean()
    assert same_rows > 0.9  # all but the network / atlas separator lines
    # the after-denoising panel: removed volumes are blank (the n/a colour)
    gap = int(height + 26)
    lower = img[top + gap : top + gap + height, x0 : x0 + width]
    removed = np.setdiff1d(np.arange(record.n_volumes), record.sample_mask)
    assert removed.size >= 2  # the demo's non-steady-state volumes
    px = int(carpet["PixelsPerVolume"])
    bad = np.array(_mpl.hex_rgba(_mpl.BAD)[:3])
    for v in removed:  # blank but for the separator lines between atlases and networks
        assert (lower[:, v * px : (v + 1) * px] == bad).all(axis=2).mean() > 0.9
    assert np.isfinite(after[:, record.sample_mask]).all()


def test_strongest_edges_picks_the_top_absolute_values_of_usable_regions():
    from bids_app.report.glass import strongest_edges

    m = np.zeros((6, 6))
    for (i, j), v in {(0, 1): 0.9, (2, 3): -0.95, (1, 4): 0.2, (0, 5): 0.99, (3, 4): -0.5}.items():
        m[i, j] = m[j, i] = v
    usable = np.array([True, True, True, True, True, False])  # region 5 has no centre
    rows, cols, vals = strongest_edges(m, usable, fraction=0.0, lo=3, hi=3)
    assert list(np.abs(vals)) == [0.5, 0.9, 0.95]  # weakest first, drawn under the strongest
    assert 5 not in set(rows) | set(cols)


def test_network_order():
    from bids_app.report.networks import network_of, ordering

    names = [
        "17Networks_LH_VisCent_1",
        "17Networks_LH_Default_1",
        "17Networks_LH_VisCent_2",
        "17Networks_RH_Default_2",
        "17Networks_RH_VisCent_3",
    ]
    order = ordering(names)
    assert [names[i] for i in order.order] == [names[0], names[2], names[4], names[1], names[3]]
    assert order.blocks == [(0, 3, "VisCent"), (3, 5, "Default")]
    assert network_of("LH_Net2_7") == "Net2"
    assert network_of("Left_Frontal_Pole") is None
    assert not ordering(["Left_Frontal_Pole", "Right_Frontal_Pole", "a", "b"]).has_networks
    lut = ["DMN", "Visual", "DMN", "Visual"]  # a lookup-table column wins over names
    assert list(ordering(["r1", "r2", "r3", "r4"], lut).order) == [0, 2, 1, 3]


def test_stale_figures_of_a_run_are_removed(outputs, tmp_path):
    out, made = outputs
    records, ctx = made["simple"]
    record = records[0]
    import copy

    ctx2 = copy.copy(ctx)
    ctx2.output_dir = tmp_path
    first = {p.name for p in report.run_figures(record, ctx2)}
    trimmed = copy.copy(record)
    trimmed.atlases = record.atlases[:1]
    second = {p.name for p in report.run_figures(trimmed, ctx2)}
    on_disk = {p.name for p in (tmp_path / f"sub-{record.entities['sub']}" / "figures").iterdir()}
    assert second < first and on_disk == second


def test_excluded_run_gets_fd_figure_and_reason(demo, tmp_path):
    bids, simple, _ = demo
    path = _variant(simple, simple.parent / "excl.yaml", "excl", "\n  min_volumes: 1000")
    out = tmp_path / "out"
    records, ctx = process(bids, out, path)
    assert all(r.excluded for r in records)
    data = _figures_json(out, records[0], "excl")
    assert data["Figures"]["Carpet"]["Rows"] == 0  # FD only: no region signal
    assert "Regressors" in data["Figures"]
    page = report.participant_report(out, "01").read_text()
    assert "only" in records[0].excluded and records[0].excluded in page.replace("&#39;", "'")


def test_excluded_run_through_the_cli_shows_fd_figure_and_reason(demo, tmp_path):
    """An excluded run (fewer volumes than min_volumes) through the CLI: the worker draws
    its FD-only figure and the participant report shows it with the reason."""
    bids, simple, _ = demo
    path = _variant(simple, simple.parent / "excl_cli.yaml", "exclcli", "\n  min_volumes: 1000")
    out = tmp_path / "out"
    args = [str(bids), str(out), "participant", "--config", str(path)]
    args += ["--participant-label", "01", "--atlas-cache", str(tmp_path / "cache")]
    assert main(args) == 0
    qc = json.loads(next((out / "sub-01" / "func").glob("*_desc-exclcli_qc.json")).read_text())
    assert qc["Excluded"] and "min_volumes" in qc["ExclusionReason"]
    figures = out / "sub-01" / "figures"
    data = json.loads(next(figures.glob("*_desc-exclcli_figures.json")).read_text())
    carpet = data["Figures"]["Carpet"]
    assert carpet["Rows"] == 0 and carpet["Columns"] == qc["VolumesTotal"]  # FD only
    img = _png(figures / carpet["File"])
    x0, y0, width, height = carpet["FdPanel"]
    inside = img[y0 + 1 : y0 + height - 1, x0 + 1 : x0 + width - 1]  # within the axes' spines
    assert (inside.min(axis=2) < 160).any(axis=0).mean() > 0.9  # the FD trace spans the run
    page = (out / "sub-01.html").read_text()
    assert "No figures for this run" not in page
    assert f'src="sub-01/figures/{carpet["File"]}"' in page
    assert f'src="sub-01/figures/{data["Figures"]["Regressors"]["File"]}"' in page
    assert qc["ExclusionReason"] in page.replace("&#39;", "'")
    assert "the run is excluded, so it has no region signal to plot" in page
    assert "Carpet plot: one row per region" not in page


def test_scrubbing_marks_threshold_and_censored_volumes(demo, tmp_path):
    """FD threshold 0.5 mm censors some of sub-01's volumes: the carpet figure's FD panel
    has those volumes in the censored colour, the others not, and the dashed threshold
    line at 0.5 mm; the records and the page say so."""
    from bids_app.report import _mpl

    bids, simple, _ = demo
    scrub = "strategy: scrubbing\n  fd_threshold: 0.5\n  std_dvars_threshold: 100\n  scrub: 0"
    path = _variant(
        simple, simple.parent / "scrub.yaml", "scrub", "", **{"strategy: simple": scrub}
    )
    out = tmp_path / "out"
    (record,), _ = process(bids, out, path, participants=["01"])
    fd = record.framewise_displacement
    nss = record.provenance["NonSteadyStateVolumes"]
    censored = record.provenance["ScrubbedVolumes"]
    assert censored == [v for v in np.flatnonzero(fd > 0.5) if v not in nss]
    assert 2 <= len(censored) < record.n_volumes // 4
    data = _figures_json(out, record, "scrub")
    carpet = data["Figures"]["Carpet"]
    assert data["FDThreshold"] == carpet["FdThreshold"] == 0.5
    assert (carpet["Censored"], carpet["NonSteadyState"]) == (len(censored), len(nss))
    img = _png(out / "sub-01" / "figures" / carpet["File"]).astype(int)
    x0, y0, width, height = carpet["FdPanel"]
    n = record.n_volumes

    def share(color: str, volume: int) -> float:
        """Fraction of the FD panel's pixel column at ``volume``'s centre in ``color``."""
        column = img[y0 : y0 + height, int(x0 + (volume + 0.5) * width / n)]
        return float((column == _mpl.hex_rgba(color)[:3]).all(axis=1).mean())

    for v in range(n):
        if v in censored:
            assert share(_mpl.CENSORED, v) > 0.7, v
        else:
            assert share(_mpl.CENSORED, v) == 0, v
        assert (share(_mpl.NSS, v) > 0.7) == (v in nss), v
    # the dashed threshold line: accent-coloured pixels in the rows at 0.5 mm, not elsewhere
    panel = img[y0 : y0 + height, x0 : x0 + width]
    accent = (np.abs(panel - _mpl.hex_rgba(_mpl.ACCENT)[:3]) < 40).all(axis=2).mean(axis=1)
    row = height - 0.5 / carpet["FdMax"] * height
    near = np.abs(np.arange(height) + 0.5 - row) <= 2
    assert accent[near].max() > 0.3  # dashes over about half the width
    assert accent[~near].max() < 0.05
    page = report.participant_report(out, "01").read_text()
    assert "(FD threshold 0.5 mm)" in page and "the dashed line the censoring threshold" in page
    assert f"{len(censored)} censored" in page


def test_session_connectome_figures(demo, tmp_path):
    bids, simple, _ = demo
    path = _variant(
        simple,
        simple.parent / "ses.yaml",
        "ses",
        "",
        **{"estimator: ledoit_wolf": "estimator: ledoit_wolf\n  aggregate: session"},
    )
    out = tmp_path / "out"
    records, ctx = process(bids, out, path)
    assert all(not a.matrices for a in records[0].atlases)
    ents = naming.unit_entities(records[0].entities, "session")
    unit = compute_unit(UnitTask(ents, [records[0].entities], "x"), ctx)
    write_unit(unit, ctx)
    files = report.unit_figures(unit, ctx)
    assert any(p.name.endswith("_unitfigures.json") for p in files)
    assert any(p.name.endswith("_relmat.png") for p in files)
    page = report.participant_report(out, records[0].entities["sub"]).read_text()
    assert "Connectomes of concatenated runs" in page


# --- HTML -----------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src: list[str] = []
        self.href: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if "src" in a:
            self.src.append(a["src"])
        if "href" in a:
            self.href.append(a["href"])


def _links(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text())
    return parser


def test_participant_report_links_only_existing_local_files(outputs):
    out, made = outputs
    for sub in SUBJECTS:
        page = out / f"sub-{sub}.html"
        links = _links(page)
        assert links.scripts == 0
        for url in links.src + links.href:
            assert not url.startswith(("http:", "https:", "//")), url
            if url.startswith(("#", "data:")):
                continue
            assert (out / url).is_file(), url
        shown = set(links.src)
        figs = sorted((out / f"sub-{sub}" / "figures").glob("*.png"))
        assert figs and shown == {f"sub-{sub}/figures/{p.name}" for p in figs}
        text = page.read_text()
        for desc in made:
            assert f'id="desc-{desc}"' in text and f'id="methods-{desc}"' in text


def test_methods_text_follows_the_configuration(outputs):
    out, made = outputs
    for desc, (_, ctx) in made.items():
        md = (out / "logs" / f"desc-{desc}_methods.md").read_text()
        assert "`simple` strategy" in md
        assert ("global signal" in md) == (desc == "gsr")
        for atlas in ctx.config.atlases:
            assert atlas.name in md
        assert "correlation and partial correlation" in md
        assert "Ledoit-Wolf" in md and naming.SOFTWARE in md
        assert "high-pass filtering (0.01 Hz" in md
        for ref in ("Abraham A", "Wang HT", "Esteban O", "Ciric R", "Ledoit O"):
            assert ref in md, ref
        page = (out / "sub-01.html").read_text()
        first = md.split("\n\n")[1]
        assert first.split(" (")[0] in page


def test_group_report_compares_the_denoising_labels(outputs):
    out, made = outputs
    page = out / "group" / "report.html"
    links = _links(page)
    for url in links.src:
        assert (page.parent / url).is_file(), url
    text = page.read_text()
    assert 'id="comparison"' in text
    table = text[text.index('id="comparison"') : text.index('id="desc-gsr"')]
    assert ">gsr</a>" in table and ">simple</a>" in table
    figs = page.parent / "figures"
    comparison = list(figs.glob("*_comparison.svg"))
    assert len(comparison) == 1
    ET.parse(comparison[0])  # well-formed SVG
    for desc in made:
        qcfc = sorted(figs.glob(f"*_desc-{desc}_qcfc.svg"))
        assert len(qcfc) == len(list((out / "group").glob(f"*_desc-{desc}_qcfc.tsv"))) > 0
        for svg in qcfc:
            assert svg.stat().st_size > 10_000
            ET.parse(svg)
        assert len(list(figs.glob(f"*_desc-{desc}_relmat.png"))) == len(
            made[desc][1].config.atlases
        )
        assert (figs / f"task-rest_space-MNI152NLin2009cAsym_desc-{desc}_qc.svg").is_file()


def _digests(out: Path) -> dict[str, str]:
    files = list(out.glob("sub-*.html")) + list(out.glob("sub-*/figures/*"))
    files += list(out.glob("group/report.html")) + list(out.glob("group/figures/*"))
    files += list(out.glob("logs/desc-*_methods.md"))
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(files)
        if p.name != ".inputs.json"
    }


def test_reports_are_byte_identical_when_made_again(outputs):
    from bids_app.report import _mpl, glass

    out, made = outputs
    before = _digests(out)
    assert len(before) > 40
    _mpl._TEXT_CACHE.clear()  # cold label cache, as in a fresh worker process
    glass._CACHE.clear()  # and the glass brain drawn again by nilearn
    for records, ctx in made.values():
        for record in records:
            report.run_figures(record, ctx)
    for sub in SUBJECTS:
        report.participant_report(out, sub)
    (out / "group" / "figures" / ".inputs.json").unlink()  # redraw every group figure
    report.group_report(out, out / "group")
    assert _digests(out) == before


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("/usr/lib/chromium/chromium", "chromium")),
    reason="headless Chromium not installed (Debian package chromium)",
)
def test_reports_open_in_a_browser(outputs, tmp_path):
    out, _ = outputs

    def check(folder: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                str(CHECK),
                str(folder),
                "--screenshots",
                str(folder.parent / "shots"),
                "--max-height",
                "3000",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    run = check(out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "reports: 4 passed, 0 failed" in run.stdout
    assert len(list((out.parent / "shots").glob("*.png"))) == 4
    broken = tmp_path / "broken" / "out"
    # sub-01: a figure deleted after the page was written, an outside link, a console error
    shutil.copytree(out / "sub-01", broken / "sub-01")
    page = (out / "sub-01.html").read_text()
    (broken / "sub-01.html").write_text(
        page.replace(
            "</main>",
            '<img src="https://example.org/logo.png" alt="">'
            "<script>console.error('deliberate error')</script></main>",
        )
    )
    next((broken / "sub-01" / "figures").glob("*_carpet.png")).unlink()
    # sub-02: a figure already missing when the page was written (the page has no <img>)
    shutil.copytree(out / "sub-02", broken / "sub-02")
    shutil.copytree(out / "code", broken / "code")
    gone = next((broken / "sub-02" / "figures").glob("*_desc-gsr_regressors.png"))
    gone.unlink()
    written = report.participant_report(broken, "02").read_text()
    assert gone.name not in written and "<img" in written
    # sub-03: a blank page
    (broken / "sub-03.html").write_text(
        "<!DOCTYPE html><html><head><title>sub-03</title></head><body></body></html>\n"
    )
    run = check(broken, "--no-group")
    assert run.returncode == 1
    assert "reports: 0 passed, 3 failed" in run.stdout
    problems = {}
    for line in run.stderr.splitlines():
        name, _, problem = line.strip().partition(": ")
        problems.setdefault(name, []).append(problem)
    one, two, three = (problems[f"sub-0{i}.html"] for i in (1, 2, 3))
    assert any(p.startswith("image did not load: sub-01/figures/") for p in one)
    assert "request outside the file system: https://example.org/logo.png" in one
    assert "console error: deliberate error" in one
    assert not any("not shown" in p or "no current record" in p for p in one)
    figs_json = naming.build_name(
        {**naming.parse_name(gone.name)[0], "desc": "gsr"}, "figures", ".json"
    )
    assert two == [f"figure listed in {figs_json} not shown (no <img>): sub-02/figures/{gone.name}"]
    assert any(p.startswith("blank page: 0 characters") for p in three)


_CHILD = """
import sys
from bids_app.cli import main
from bids_app.report import _mpl
drawn = []
render = _mpl._render_texts
_mpl._render_texts = lambda todo: (drawn.extend(todo), render(todo))
code = main(sys.argv[1:])
print("nilearn" in sys.modules, len(drawn))
sys.exit(code)
"""


def test_glass_brain_and_labels_are_cached_with_the_atlases(demo, tmp_path):
    """The second job of a cohort takes the rendered glass brain and the labels from the
    atlas cache: no nilearn import, no label drawn, and the same figure bytes as the job
    that rendered them."""
    bids, config, _ = demo
    cache, trees, seen = tmp_path / "cache", [], []
    for i in range(2):
        out = tmp_path / f"job{i}" / "out"
        args = [bids, out, "participant", "--config", config, "--participant-label", "01"]
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, *map(str, args), "--atlas-cache", str(cache)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        nilearn_imported, drawn = proc.stdout.split()[-2:]
        seen.append((nilearn_imported, int(drawn)))
        figures = sorted((out / "sub-01" / "figures").glob("*.png"))
        assert any(p.name.endswith("_connectome.png") for p in figures), "no connectome figure"
        trees.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in figures})
    assert seen[0][0] == "True" and seen[0][1] > 30
    assert seen[1] == ("False", 0)
    assert len(list(cache.glob("glass-*.npz"))) == 1
    assert len(list((cache / "text").glob("*.npy"))) == seen[0][1]
    assert len(trees[0]) > 5 and trees[0] == trees[1]


def test_an_unreadable_cached_label_is_drawn_again(tmp_path):
    from bids_app.report import _mpl

    key = ("Default Mode", 7.0, "normal")
    _mpl.use_cache(tmp_path)
    try:
        _mpl._TEXT_CACHE.pop(key, None)
        drawn = _mpl.text_bitmap(*key).copy()
        (path,) = (tmp_path / "text").glob("*.npy")
        _mpl._TEXT_CACHE.pop(key)
        np.testing.assert_array_equal(_mpl.text_bitmap(*key), drawn)  # read back
        path.write_bytes(b"\x93NUMPY truncated")
        _mpl._TEXT_CACHE.pop(key)
        np.testing.assert_array_equal(_mpl.text_bitmap(*key), drawn)  # drawn again
        assert np.load(path).tobytes() == drawn.tobytes()  # and the entry rewritten
    finally:
        _mpl.use_cache(None)
