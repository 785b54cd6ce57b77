"""The Python API: every example of docs/api.md runs, in order, in an empty folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"

pytestmark = pytest.mark.slow


def test_docs_api_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_api"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)
        except Exception as err:  # pragma: no cover - shows which block failed
            raise AssertionError(f"docs/api.md example {i + 1} failed: {err!r}\n{code}") from err
    out = capsys.readouterr().out
    assert "3 runs done, 0 skipped, 0 failed" in out
    assert "labels found: 01 02 03" in out
    assert (tmp_path / "demo/out/group").is_dir()
    result = namespace["result"]
    ts = result.timeseries["Grid"]
    assert ts.shape[0] == len(result.sample_mask) == 58
    assert abs(ts.mean()).max() < 1e-6  # z-scored
    # the API and the command line give the same numbers
    series = namespace["series"]
    (written,) = series.values()
    import numpy as np

    np.testing.assert_allclose(written.to_numpy(), ts.to_numpy(), atol=5e-9)
