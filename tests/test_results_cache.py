"""The results committed under docs/results/ stay readable: each report folder's cache rebuilds the whole report with
today's code, without MLflow (``dmh report --from-cache FOLDER``), with the same numbers it was exported with. A
folder commits its cache (data/), tables, comparisons and index.md; figures only where its runs feed one (the
report redraws every figure and index.html from the cache). A campaign's folder (``docs/results/<campaign>``) is
redrawn as the campaign draws it: beside the report it reruns, where it names one (``claims_moved``)."""

from pathlib import Path

import pandas as pd
import pytest

from dmh.report import make_all
from sweeps.campaign import CAMPAIGNS, ROOT

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
FOLDERS = sorted(p.parent.parent for p in RESULTS.glob("*/data/runs.csv"))


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_a_committed_results_cache_redraws_its_report_with_the_same_numbers(folder, tmp_path):
    out = tmp_path / folder.name
    reruns = getattr(CAMPAIGNS.get(folder.name), "verdicts_before", None)
    before = ["--verdicts-before", str(ROOT / reruns)] if reruns else []
    assert make_all.main(["--from-cache", str(folder), "--out", str(out), *before]) == 0
    for table in sorted((folder / "tables").glob("*.csv")):
        pd.testing.assert_frame_equal(pd.read_csv(out / "tables" / table.name), pd.read_csv(table), obj=table.name)
    for figure in sorted((folder / "figures").glob("*.png")):  # the figures committed, drawn again
        assert (out / "figures" / figure.name).stat().st_size > 0, figure.name
    assert (out / "index.html").stat().st_size > 0
