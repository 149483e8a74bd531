"""The paper's published numbers (dmh/report/paper_numbers.csv) are complete and self-consistent."""

from __future__ import annotations

import pandas as pd
import pytest

from dmh.errors import DmhError
from dmh.report.paper import PAPER_CSV, load_paper_numbers, paper_value

D4RL = [
    f"{env}-{ds}-v2"
    for env in ("halfcheetah", "hopper", "walker2d")
    for ds in ("medium-expert", "medium", "medium-replay")
]
TABLE2_ALGOS = ["bc-10", "td3+bc", "td3", "dt", "ad-mamba", "ad-transformer", "dmh"]
FIGURES = {"table1", "table2", "table4", "fig2", "fig3a", "fig3b", "fig4a", "fig4b", "fig5", "fig6"}


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return load_paper_numbers()


def test_every_row_names_a_known_figure_and_a_provenance_with_its_section(df: pd.DataFrame) -> None:
    assert set(df["figure"]) == FIGURES
    assert df["provenance"].str.fullmatch(r"(V|D|D~) paper\.md §6\.[1-8]").all()
    assert not df.duplicated(["figure", "task", "algo", "variant", "metric", "x"]).any()


def test_every_table2_cell_of_the_paper_is_present(df: pd.DataFrame) -> None:
    for task in [*D4RL, "average"]:
        for algo in TABLE2_ALGOS:
            assert paper_value(df, "table2", task, algo, "normalized_score") is not None, (task, algo)
    assert (df["figure"] == "table2").sum() == 10 * 7


def test_table2_dmh_column_mean_recomputes_to_printed_total(df: pd.DataFrame) -> None:
    cells = [paper_value(df, "table2", t, "dmh", "normalized_score") for t in D4RL]
    assert sum(cells) / 9 == pytest.approx(87.53, abs=0.01)
    assert paper_value(df, "table2", "average", "dmh", "normalized_score") == 87.53


def test_table2_printed_totals_that_disagree_with_their_cells_are_flagged(df: pd.DataFrame) -> None:
    for algo in ("dt", "ad-mamba", "ad-transformer"):
        mean = sum(paper_value(df, "table2", t, algo, "normalized_score") for t in D4RL) / 9
        printed = paper_value(df, "table2", "average", algo, "normalized_score")
        assert abs(mean - printed) > 0.1
        note = df.query("figure == 'table2' and task == 'average' and algo == @algo")["note"].item()
        assert f"{mean:.2f}" in note


def test_table4_recomputed_halfcheetah_online_speedup_is_27_9(df: pd.DataFrame) -> None:
    tf = paper_value(df, "table4", "halfcheetah", "ad-transformer", "online_min")
    dmh = paper_value(df, "table4", "halfcheetah", "dmh", "online_min")
    assert tf / dmh == pytest.approx(27.9, abs=0.05)
    assert paper_value(df, "table4", "halfcheetah", "dmh", "speedup_printed") == 28


def test_fig3a_dt_and_dm_at_tmaze_20000_are_out_of_memory_without_value(df: pd.DataFrame) -> None:
    for algo in ("dt", "dm"):
        row = df.query("figure == 'fig3a' and task == 'tmaze-20000' and algo == @algo")
        assert row["status"].item() == "out_of_memory"
        assert row["value"].isna().item()
        assert paper_value(df, "fig3a", "tmaze-20000", algo, "return", x=20000) is None
    assert paper_value(df, "fig3a", "tmaze-20000", "dmh", "return", x=20000) == 1.0


def test_fig6_with_subgoals_bars_equal_table2_dmh_column(df: pd.DataFrame) -> None:
    for task in D4RL:
        bar = paper_value(df, "fig6", task, "dmh", "normalized_score", variant="with_subgoals")
        assert bar == pytest.approx(paper_value(df, "table2", task, "dmh", "normalized_score"), abs=0.06), task


def test_table1_effectiveness_rows_equal_table2_ad_columns(df: pd.DataFrame) -> None:
    keys = ["task", "algo", "value", "err"]
    t1 = df.query("figure == 'table1' and metric == 'normalized_score'")[keys].reset_index(drop=True)
    t2 = df.query("figure == 'table2' and algo in ['ad-mamba', 'ad-transformer'] and task != 'average'")[keys]
    pd.testing.assert_frame_equal(
        t1.sort_values(keys[:2]).reset_index(drop=True), t2.sort_values(keys[:2]).reset_index(drop=True)
    )


def test_table1_efficiency_rows_equal_table4_offline_hours(df: pd.DataFrame) -> None:
    for family in ("halfcheetah", "hopper", "walker2d"):
        for algo in ("ad-mamba", "ad-transformer"):
            metric = "offline_h_per_10k_updates"
            assert paper_value(df, "table1", family, algo, metric) == paper_value(df, "table4", family, algo, metric)


def test_fig4b_c_is_both_variant_and_x(df: pd.DataFrame) -> None:
    fig4b = df[df["figure"] == "fig4b"]
    assert (fig4b["variant"] == "c=" + fig4b["x"].astype(int).astype(str)).all()
    assert paper_value(df, "fig4b", "hopper-medium-v2", "dmh", "normalized_score", variant="c=20", x=20) == 83.2


def test_malformed_csv_missing_a_column_raises_dmherror_naming_it(tmp_path) -> None:
    bad = tmp_path / "paper.csv"
    pd.read_csv(PAPER_CSV, dtype=str, keep_default_na=False).drop(columns="err_kind").to_csv(bad, index=False)
    with pytest.raises(DmhError, match="err_kind"):
        load_paper_numbers(bad)


def test_non_number_in_value_column_raises_dmherror(tmp_path) -> None:
    bad = tmp_path / "paper.csv"
    frame = pd.read_csv(PAPER_CSV, dtype=str, keep_default_na=False)
    frame.loc[0, "value"] = "≈94"
    frame.to_csv(bad, index=False)
    with pytest.raises(DmhError, match="value"):
        load_paper_numbers(bad)
