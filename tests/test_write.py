"""Writers: TSV text, atomic replacement."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from bids_app.write import NA, atomic_path, read_tsv, tsv_text


def _pandas_text(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, sep="\t", index=False, na_rep=NA, float_format="%.10g", lineterminator="\n")
    return buf.getvalue()


@pytest.mark.parametrize("shape", [(1, 2), (7, 3), (60, 120)])
def test_float_tables_are_written_like_pandas_and_read_back(shape, tmp_path):
    rng = np.random.default_rng(shape[1])
    values = rng.standard_normal(shape) * 10.0 ** rng.integers(-12, 12, size=shape)
    values.flat[::5] = np.nan
    values.flat[1] = -0.0
    frame = pd.DataFrame(values, columns=[f"LH_Vis_{i}" for i in range(shape[1])])
    text = tsv_text(frame)
    assert text == _pandas_text(frame)
    (tmp_path / "t.tsv").write_text(text)
    back = read_tsv(tmp_path / "t.tsv").to_numpy()
    np.testing.assert_allclose(back, values, rtol=1e-9, equal_nan=True)


def test_mixed_tables_and_odd_names_keep_pandas_quoting():
    frame = pd.DataFrame({'a "b"': [1.5, np.nan], "name": ["x", "y"]})
    assert tsv_text(frame) == _pandas_text(frame)
    assert tsv_text(frame).splitlines()[2] == "n/a\ty"


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    dest = tmp_path / "sub" / "out.tsv"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(dest.parent.iterdir()) == []
