"""The report: every table and figure builds from a synthetic MLflow store whose values are known, and the numbers in
it (means, standard errors, IQM, speed-ups, averages) are checked, as is the way missing data is shown."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from mlflow import MlflowClient

from dmh.data.d4rl import normalized_score
from dmh.envs.mujoco import D4RL_DATASETS
from dmh.errors import DmhError
from dmh.report import claims, make_all, z_table
from dmh.report.export import export_runs, load_export, merge_exports, z_draw
from dmh.report.index import preamble
from dmh.report.stats import bootstrap_ci, iqm, standard_error, summarize, t_interval
from dmh.vocabulary import Metric, Outcome, Tag

# ------------------------------------------------------------------------------------------------------- statistics


def test_iqm_is_the_mean_after_dropping_a_quarter_of_the_values_from_each_end():
    assert iqm([7.0]) == 7.0
    assert iqm([1, 2, 3, 100]) == pytest.approx(2.5)  # the middle two
    assert iqm([0, 1, 2, 3, 10, 20, 30]) == pytest.approx((1 + 2 + 3 + 10 + 20) / 5)  # int(7 / 4) = 1 dropped per end
    assert iqm(np.arange(10.0)) == pytest.approx(np.mean(np.arange(2.0, 8.0)))  # two dropped per end
    assert np.allclose(iqm(np.array([[1.0, 2, 3, 100], [4, 4, 4, 4]]), axis=1), [2.5, 4.0])


@pytest.mark.parametrize("n", range(1, 13))
def test_iqm_is_scipys_25_percent_trimmed_mean_as_rliable_computes_it(n):
    x = np.random.default_rng(n).normal(size=n) ** 3  # skewed, so dropping versus weighting the cut values differs
    assert iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25))


def test_iqm_of_a_2d_array_is_scipys_trimmed_mean_along_the_axis():
    x = np.random.default_rng(0).exponential(size=(7, 10))
    assert np.allclose(iqm(x, axis=1), scipy.stats.trim_mean(x, 0.25, axis=1))
    assert np.allclose(iqm(x, axis=0), scipy.stats.trim_mean(x, 0.25, axis=0))


def test_standard_error_is_sample_std_over_root_n_and_undefined_for_one_seed():
    assert standard_error([0.2, 0.4, 0.6, 0.8, 1.0]) == pytest.approx(math.sqrt(0.1 / 5))
    assert math.isnan(standard_error([3.0]))


def test_bootstrap_interval_is_reproducible_brackets_the_iqm_and_narrows_with_more_seeds():
    rng = np.random.default_rng(1)
    few, many = rng.normal(size=5), rng.normal(size=200)
    low, high = bootstrap_ci(few)
    assert (low, high) == bootstrap_ci(few)
    assert low <= iqm(few) <= high
    low_m, high_m = bootstrap_ci(many)
    assert high_m - low_m < high - low
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))


def test_t_interval_is_the_mean_plus_minus_students_t_quantile_times_the_standard_error():
    low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 dof) · s.e. (std 1, 3 seeds)
    assert (low, high) == pytest.approx((2.0 - half, 2.0 + half))
    x = np.random.default_rng(2).normal(size=10)
    expected = scipy.stats.t.interval(0.95, df=9, loc=x.mean(), scale=scipy.stats.sem(x))
    assert t_interval(x) == pytest.approx(expected)
    assert all(math.isnan(v) for v in t_interval([1.0]))


def test_summary_drops_nans_and_counts_seeds():
    s = summarize([1.0, math.nan, 3.0])
    assert (s.n, s.mean) == (2, 2.0)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


# ---------------------------------------------------------------------------------------------------- the MLflow store
class Store:
    """Writes runs shaped like ``dmh train``'s into a SQLite MLflow store."""

    def __init__(self, path):
        self.uri = f"sqlite:///{path}"
        self.client = MlflowClient(self.uri)
        self.clock = 1_000_000

    def run(self, sweep, algo, task, seed, *, c=20, subgoals=True, last_return=None, curve=None, score=None,
            online=None, offline=None, status="FINISHED", oom=False, steps=100, experiment=None, during=None,
            params=None):
        """``during``: the values of ``Metric.LAST_RETURN_DURING_TRAINING``, one per evaluation during training;
        ``params``: more logged params (e.g. the z study's ``model.z_draw``)."""
        exp = self.client.get_experiment_by_name(experiment or sweep)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment or sweep)
        self.clock += 1000
        run = self.client.create_run(exp_id, start_time=self.clock, tags={"sweep": sweep, "algo": algo, "task": task})
        params = dict(algo=algo, task=task, seed=seed, preset="smoke", steps=steps, c=c, n_context=4,
                      valuable_subgoals=subgoals, eval_tasks=2, eval_episodes=3, threads=1, run_dir="x",
                      **(params or {}))
        for k, v in params.items():
            self.client.log_param(run.info.run_id, k, str(v))
        metrics = {"eval/last_return": last_return, "eval/normalized_score": score, "time/online_min": online,
                   "time/offline_h_per_10k_updates": offline}
        for name, value in metrics.items():
            if value is not None:
                self.client.log_metric(run.info.run_id, name, value, step=steps)
        for episode, value in enumerate(curve or []):
            self.client.log_metric(run.info.run_id, "eval/return", value, step=episode)
        for i, value in enumerate(during or [], start=1):  # every steps / (len + 1) updates, as eval_every does
            self.client.log_metric(run.info.run_id, Metric.LAST_RETURN_DURING_TRAINING, value,
                                   step=i * steps // (len(during) + 1))
        if oom:
            self.client.log_metric(run.info.run_id, "oom", 1.0)
            self.client.set_tag(run.info.run_id, "status_detail", "out_of_memory")
        self.client.set_terminated(run.info.run_id, status=status, end_time=self.clock + 500)
        return run.info.run_id


C_RETURNS = {1: [0.0, 0.5, 0.6, 0.7, 5.0], 10: [0.2, 0.4, 0.6, 0.8, 1.0]}  # 5 seeds each
D4RL_DMH = {name: (80.0 + i, 82.0 + i) for i, name in enumerate(D4RL_DATASETS)}  # 2 seeds, mean 81 + i, se 1
# The z study's draws as sweeps/z_study.py logs them.
Z_DRAWS = {"step": {"model.z_train": "sample", "model.z_draw": "step"},
           "block": {"model.z_train": "sample", "model.z_draw": "block"},
           "mean": {"model.z_train": "mean", "model.z_draw": "block"}}
# (task, z, z_dim, valuable sub-goals) → per seed (first-episode return, final return, evaluations during training);
# listed out of the table's order, which sorts them
Z_RUNS = {("darkroom-hard", "mean", 8, True): [(0.0, 0.4, []), (0.2, 0.6, [])],
          ("darkroom-hard", "block", 2, True): [(0.0, 0.3, [0.1])],
          ("darkroom-hard", "step", 2, True): [(0.1, 0.5, [0.2, 0.95]), (0.2, 0.7, []), (0.3, 0.9, [])],
          ("darkroom", "block", 2, True): [(0.0, 1.0, [])]}


def return_for_score(task, score):
    """The return whose D4RL normalised score is ``score`` (the map is linear)."""
    zero, one = normalized_score(task, 0.0), normalized_score(task, 1.0)
    return (score - zero) / (one - zero)


def synthetic_report(folder):
    """A synthetic store covering every view and the z study in ``folder``, and the report built from it."""
    store = Store(folder / "mlflow.db")
    for c, values in C_RETURNS.items():
        for seed, value in enumerate(values):
            store.run("c_sensitivity", "dmh", "large-darkroom-hard", seed, c=c, last_return=value, curve=[value])
    for c in (1, 5):  # a task Fig. 4b lacks: its paper reference at the paper's c comes from Fig. 4a
        store.run("c_sensitivity", "dmh", "darkroom-hard", 0, c=c, last_return=0.3)
    # a rerun of c=10 seed 0 that finished earlier is replaced by the later one (latest wins) ...
    store.clock -= 10_000_000
    store.run("c_sensitivity", "dmh", "large-darkroom-hard", 0, c=10, last_return=99.0, curve=[99.0])
    store.clock += 20_000_000
    # ... and a trial that never finished is a reason, not a zero
    store.run("c_sensitivity", "dmh", "large-darkroom-hard", 0, c=15, status="KILLED")
    for name, (a, b) in D4RL_DMH.items():
        for seed, value in enumerate((a, b)):
            # the first dataset's seed 0 scored 95 during training, above its final 80
            during = [return_for_score(name, 95.0)] if (name, seed) == (D4RL_DATASETS[0], 0) else None
            store.run("d4rl", "dmh", name, seed, score=value, last_return=value * 30, online=2.0, offline=1.0,
                      during=during)
    for seed, value in enumerate((60.0, 70.0)):  # one AD (Transformer) dataset only
        store.run("d4rl", "ad-transformer", "hopper-medium-v2", seed, score=value, last_return=1, online=50.0,
                  offline=3.0 + seed)
    for seed in range(2):
        store.run("grid_world", "dmh", "darkroom", seed, last_return=5 + seed, curve=[1 + seed, 3 + seed, 5 + seed],
                  online=2.0, offline=0.5)
        store.run("grid_world", "ad-transformer", "darkroom", seed, last_return=2, curve=[1, 2, 2], online=10.0,
                  offline=0.7)
    store.run("tmaze", "dmh", "tmaze-20", 0, last_return=1.0, online=0.1, offline=0.2)
    store.run("tmaze", "dt", "tmaze-20000", 0, oom=True)
    # with valuable sub-goals the best evaluation came during training; without, it is the final one
    for subgoals, value, during, score_during in ((True, 0.9, [0.2, 1.4], 95.0), (False, 0.5, [0.1, 0.3], 10.0)):
        store.run("subgoal_ablation", "dmh", "darkroom-hard", 0, subgoals=subgoals, last_return=value, during=during)
        store.run("subgoal_ablation", "dmh", "hopper-medium-v2", 0, subgoals=subgoals, score=value * 100,
                  last_return=1, during=[return_for_score("hopper-medium-v2", score_during)])
    for (task, z, z_dim, subgoals), seeds in Z_RUNS.items():
        for seed, (first, final, during) in enumerate(seeds):
            store.run("z_study", "dmh", task, seed, subgoals=subgoals, last_return=final, curve=[first, final],
                      during=during, params={**Z_DRAWS[z], "model.z_dim": z_dim})
    store.run("z_study", "dmh", "darkroom-hard", 0, subgoals=False, status="KILLED",
              params={**Z_DRAWS["block"], "model.z_dim": 32})
    out = folder / "reports"
    assert make_all.main(["--tracking-uri", store.uri, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return synthetic_report(tmp_path_factory.mktemp("report"))


def read(report, name):
    return pd.read_csv(report / "comparison" / f"{name}.csv", keep_default_na=True)


def test_every_table_and_figure_is_written_and_linked_from_the_index(report):
    index = (report / "index.md").read_text()
    for name in ("claims", "table1", "table2", "table4", "z_study"):
        for ext in ("md", "tex", "csv"):
            assert (report / "tables" / f"{name}.{ext}").stat().st_size > 0
            assert f"tables/{name}.{ext}" in index
    for name in make_all.FIGURES:
        for ext in ("png", "pdf"):
            assert (report / "figures" / f"{name}.{ext}").stat().st_size > 1000
            assert f"figures/{name}.{ext}" in index


def test_the_claims_table_judges_the_synthetic_runs_and_the_index_counts_its_verdicts(report):
    numbers = pd.read_csv(report / "tables" / "claims.csv")
    fig2 = numbers[(numbers["view"] == "fig2") & (numbers["task"] == "darkroom")].set_index("worse")
    # DM-H's curves run 1+s → 5+s: 4 better at its last episode than its first at both seeds, an interval of width 0,
    # which two seeds do not make a verdict (claims.MIN_SEEDS)
    improves = fig2.loc["DM-H, episode 1"]
    assert (improves["n"], improves["difference"], improves["low"], improves["high"]) == (2, *[pytest.approx(4.0)] * 3)
    assert improves["verdict"] == "inconclusive"
    # against AD (Transformer)'s last episode (2) by 3 and 4: two seeds' t-interval (t = 12.7) holds 0
    against = fig2.loc["AD (Transformer), last episode"]
    assert against["difference"] == pytest.approx(3.5) and against["verdict"] == "inconclusive"
    counts = numbers["verdict"].value_counts()
    summary = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in claims.VERDICTS) + f", of {len(numbers)}"
    assert summary in (report / "index.md").read_text()
    assert summary in (report / "index.html").read_text()


def test_c_sensitivity_cells_hold_mean_se_and_iqm_over_seeds_with_latest_rerun_winning(report):
    cells = read(report, "fig4b").set_index(["task", "x"])
    c1, c10 = cells.loc[("large-darkroom-hard", 1.0)], cells.loc[("large-darkroom-hard", 10.0)]
    assert (c1["n"], c10["n"]) == (5, 5)
    assert c1["mean"] == pytest.approx(np.mean(C_RETURNS[1]))
    assert c1["se"] == pytest.approx(standard_error(C_RETURNS[1]))
    assert c1["iqm"] == pytest.approx(0.6)  # the outlier seed (5.0) barely moves it; the mean is 1.36
    assert c1["iqm_low"] <= c1["iqm"] <= c1["iqm_high"]
    assert c10["mean"] == pytest.approx(0.6)  # the earlier 99.0 rerun of seed 0 is ignored
    assert c10["paper"] == pytest.approx(0.96)  # the paper's digitised value at c = 10


def test_a_task_the_papers_figure_lacks_is_compared_at_the_papers_c_from_another_figure(report):
    cells = read(report, "fig4b").set_index(["task", "x"])
    at_paper_c = cells.loc[("darkroom-hard", 5.0)]
    assert at_paper_c["paper"] == pytest.approx(0.95) and at_paper_c["paper_status"] == "ok"
    assert "fig4a at the paper's c = 5" in at_paper_c["paper_provenance"]
    assert cells.loc[("darkroom-hard", 1.0), "paper_status"] == "not in paper"
    assert "paper from fig4a at the paper's c = 5" in (report / "comparison" / "fig4b.md").read_text()


def test_a_cell_whose_runs_did_not_finish_is_missing_with_the_reason_not_zero(report):
    cells = read(report, "fig4b").set_index(["task", "x"])
    c15 = cells.loc[("large-darkroom-hard", 15.0)]
    assert c15["n"] == 0 and math.isnan(c15["mean"]) and c15["reason"] == "not finished (killed ×1)"
    hopper = cells.loc[("hopper-medium-v2", 10.0)]  # the paper has it, we have no runs
    assert hopper["n"] == 0 and hopper["reason"] == "no runs" and hopper["paper"] == pytest.approx(83.2)
    md = (report / "comparison" / "fig4b.md").read_text()
    assert "— (no runs)" not in md or "0.00 ±" not in md.split("Hopper medium")[1].splitlines()[0]


def test_table2_reports_mean_se_per_dataset_and_the_total_average_only_when_complete(report):
    numbers = pd.read_csv(report / "tables" / "table2.csv")
    dmh = numbers[numbers["algo"] == "dmh"].set_index("task")
    for i, name in enumerate(D4RL_DATASETS):
        assert dmh.loc[name, "mean"] == pytest.approx(81.0 + i)
        assert dmh.loc[name, "se"] == pytest.approx(1.0)  # two seeds 2 apart: std √2, se 1
    text = (report / "tables" / "table2.md").read_text()
    total = next(line for line in text.splitlines() if line.startswith("| Total average"))
    assert f"{np.mean([81.0 + i for i in range(9)]):.2f} ± {1 / 3:.2f} (2)" in total  # √(9·1²)/9 = 1/3
    assert "87.53 ± 0.59" in total  # the paper's printed DM-H total
    assert "— (1 of 9 datasets)" in total  # AD (Transformer) has one dataset: no average
    assert "— (0 of 9 datasets)" in total  # DT has none


def test_table4_speedup_is_the_ratio_of_online_minutes_and_the_papers_is_recomputed(report):
    numbers = pd.read_csv(report / "tables" / "table4.csv")
    speed = numbers[numbers["part"] == "speedup_online"].set_index("task")
    assert speed.loc["darkroom", "mean"] == pytest.approx(10.0 / 2.0)
    assert speed.loc["hopper", "mean"] == pytest.approx(50.0 / 2.0)  # families pool their datasets
    assert speed.loc["halfcheetah", "paper"] == pytest.approx(173.11 / 6.21)
    assert math.isnan(speed.loc["large-darkroom", "mean"])
    offline = numbers[(numbers["part"] == "offline") & (numbers["algo"] == "ad-transformer")].set_index("task")
    assert offline.loc["hopper", "mean"] == pytest.approx(3.5) and offline.loc["hopper", "n"] == 2
    text = (report / "tables" / "table4.md").read_text()
    assert "5.0×" in text and "(printed 28×)" in text


def test_table1_compares_the_ad_backbones_on_score_and_hours(report):
    numbers = pd.read_csv(report / "tables" / "table1.csv")
    effect = numbers[(numbers["part"] == "effectiveness") & (numbers["algo"] == "ad-transformer")]
    hopper = effect.set_index("task").loc["hopper-medium-v2"]
    assert hopper["mean"] == pytest.approx(65.0) and hopper["paper"] == pytest.approx(72.58)
    assert "\\begin{tabular}" in (report / "tables" / "table1.tex").read_text()


def test_grid_world_curves_are_averaged_per_episode(report):
    cells = read(report, "fig2")
    dmh = cells[(cells["task"] == "darkroom") & (cells["algo"] == "dmh") & (cells["n"] > 0)].set_index("x")
    assert list(dmh.index) == [1.0, 2.0, 3.0]
    assert list(dmh["mean"]) == pytest.approx([1.5, 3.5, 5.5])
    assert list(dmh["se"]) == pytest.approx([0.5, 0.5, 0.5])


def test_out_of_memory_is_a_result_shown_as_such(report):
    cells = read(report, "fig3a").set_index(["algo", "x"])
    assert cells.loc[("dt", 20000.0), "reason"] == "out of memory"
    assert cells.loc[("dt", 20000.0), "paper_status"] == "out_of_memory"
    assert cells.loc[("dmh", 20.0), "mean"] == 1.0 and cells.loc[("dmh", 20.0), "paper_status"] == "not in paper"


def test_subgoal_ablation_splits_with_and_without_valuable_subgoals(report):
    grid = read(report, "fig4a").set_index(["task", "variant"])
    assert grid.loc[("darkroom-hard", "with_subgoals"), "mean"] == pytest.approx(0.9)
    assert grid.loc[("darkroom-hard", "without_subgoals"), "mean"] == pytest.approx(0.5)
    assert grid.loc[("darkroom-hard", "without_subgoals"), "paper"] == pytest.approx(0.89)
    d4rl = read(report, "fig6").set_index(["task", "variant"])
    assert d4rl.loc[("hopper-medium-v2", "without_subgoals"), "mean"] == pytest.approx(50.0)


def test_index_states_the_scale_of_every_number(report):
    index = (report / "index.md").read_text()
    assert "presets: smoke" in index and "gradient updates: 100" in index and "seeds per cell: 1–5" in index


def test_the_cached_export_rebuilds_the_same_report_without_the_store(report, tmp_path):
    cached = tmp_path / "again"
    (cached / "data").mkdir(parents=True)
    for name in ("runs.csv", "curves.csv", "meta.json"):
        (cached / "data" / name).write_bytes((report / "data" / name).read_bytes())
    assert make_all.main(["--from-cache", "--out", str(cached), "--tracking-uri", "sqlite:////nonexistent.db"]) == 0
    for table in ("table2.csv", "z_study.csv"):
        assert (cached / "tables" / table).read_text() == (report / "tables" / table).read_text(), table
    export = load_export(cached / "data")
    assert export.runs["trial_key"].is_unique


def test_a_committed_report_folder_rebuilds_elsewhere_from_its_cache(report, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert make_all.main(["--from-cache", str(report), "--out", str(out), "--tracking-uri",
                          "sqlite:////nonexistent.db"]) == 0
    for name in ("tables/table2.csv", "tables/z_study.csv", "data/runs.csv", "index.html"):
        assert (out / name).is_file(), name
    assert (out / "tables" / "z_study.csv").read_text() == (report / "tables" / "z_study.csv").read_text()
    assert make_all.main(["--from-cache", str(report / "data"), "--out", str(tmp_path / "again")]) == 0
    capsys.readouterr()
    assert make_all.main(["--from-cache", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no report cache there" in capsys.readouterr().err


def test_a_missing_store_or_experiment_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "reports"
    assert make_all.main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(out)]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    store = Store(tmp_path / "mlflow.db")
    store.run("tmaze", "dmh", "tmaze-20", 0, last_return=1.0)
    assert make_all.main(["--tracking-uri", store.uri, "--experiments", "nope", "--out", str(out)]) == 2
    assert "no MLflow experiment named nope" in capsys.readouterr().err
    assert not (out / "index.md").exists() and not (out / "data").exists()
    assert make_all.main(["--from-cache", "--out", str(tmp_path / "empty")]) == 2
    assert "no cached export" in capsys.readouterr().err


def test_curves_plots_one_experiments_in_context_curves_with_their_numbers(report, tmp_path, capsys):
    from dmh.report import curves

    uri = (report / "data" / "meta.json").read_text().split('"tracking_uri": "')[1].split('"')[0]
    out = tmp_path / "darkroom.png"
    assert curves.main(["--experiment", "grid_world", "--task", "darkroom", "--tracking-uri", uri,
                        "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and out.with_suffix(".pdf").exists()
    printed = capsys.readouterr().out
    assert "dmh              seeds 2  episode 1 1.50 ± 0.50   last 5.50 ± 0.50" in printed
    assert curves.main(["--experiment", "grid_world", "--task", "key-to-door", "--tracking-uri", uri,
                        "--out", str(out)]) == 2


def test_a_sweeps_parent_run_is_not_exported_as_a_trial(tmp_path):
    store = Store(tmp_path / "mlflow.db")
    trial = store.run("c_sensitivity", "dmh", "darkroom", 0, last_return=1.0)
    exp_id = store.client.get_experiment_by_name("c_sensitivity").experiment_id
    parent = store.client.create_run(exp_id, tags={Tag.SWEEP_PARENT: "true", Tag.SWEEP: "c_sensitivity"})
    store.client.set_terminated(parent.info.run_id, status="FINISHED")
    export = export_runs(store.uri)
    assert list(export.runs["run_id"]) == [trial]
    assert export.runs["outcome"].iloc[0] == Outcome.COMPLETED


def test_merged_exports_keep_one_row_per_trial_the_latest_result_winning(tmp_path):
    """A campaign's sittings, each with its own store, merged into one cache: a trial run again replaces its row
    (a later unfinished run does not replace a result), new trials are added, curves follow the rows kept."""
    old_store, new_store = Store(tmp_path / "old.db"), Store(tmp_path / "new.db")
    replaced = old_store.run("c_sensitivity", "dmh", "darkroom", 0, last_return=1.0, curve=[0.0, 1.0])
    kept = old_store.run("c_sensitivity", "dmh", "darkroom", 1, last_return=2.0, curve=[0.5, 2.0])
    old = export_runs(old_store.uri)
    new_store.clock = old_store.clock  # the later sitting ends later
    again = new_store.run("c_sensitivity", "dmh", "darkroom", 0, last_return=3.0, curve=[1.0, 3.0])
    new_store.run("c_sensitivity", "dmh", "darkroom", 1, status="KILLED")
    added = new_store.run("c_sensitivity", "dmh", "darkroom", 2, last_return=4.0, curve=[2.0, 4.0])
    merged = merge_exports(old, export_runs(new_store.uri))
    rows = merged.runs.set_index("seed")
    assert dict(rows["run_id"]) == {0: again, 1: kept, 2: added}
    assert list(rows["last_return"]) == [3.0, 2.0, 4.0]
    assert replaced not in set(merged.curves["run_id"])
    assert merged.curves.groupby("run_id")["return"].last().to_dict() == {again: 3.0, kept: 2.0, added: 4.0}
    assert [e["tracking_uri"] for e in merged.source["exports"]] == [old_store.uri, new_store.uri]
    assert merged.source["tracking_uri"] == f"{old_store.uri}; {new_store.uri}"
    twice = merge_exports(merged, export_runs(new_store.uri))  # merging a sitting again changes no row
    pd.testing.assert_frame_equal(twice.runs, merged.runs)
    assert len(twice.source["exports"]) == 3
    assert "(3 exports merged, the latest result of each trial kept)" in preamble(twice.source)[0]


def test_a_setting_logged_as_none_exports_as_missing_not_as_an_error(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("tmaze"), tags={Tag.TASK: "tmaze-20000", Tag.ALGO: "dt"})
    # the config as a sweep logs it for a trial that ran out of memory before training started: c and n unresolved
    for key, value in {"seed": "0", "c": "None", "n_context": "None"}.items():
        client.log_param(run.info.run_id, key, value)
    client.log_metric(run.info.run_id, Metric.OOM, 1.0)
    client.set_terminated(run.info.run_id, status="FINISHED")
    (row,) = (r for _, r in export_runs(client.tracking_uri).runs.iterrows())
    assert (row["algo"], row["task"], row["outcome"]) == ("dt", "tmaze-20000", Outcome.OUT_OF_MEMORY)
    assert pd.isna(row["c"]) and pd.isna(row["n_context"])


# ------------------------------------------------------------------------------ the best evaluation beside the final
def runs_csv(report):
    return pd.read_csv(report / "data" / "runs.csv")


def test_best_return_is_the_max_over_evaluations_during_training_and_the_final_one(report):
    runs = runs_csv(report)
    ablation = runs[(runs["sweep"] == "subgoal_ablation") & (runs["task"] == "darkroom-hard")]
    by_subgoals = ablation.set_index("valuable_subgoals")
    assert by_subgoals.loc[True, "best_return"] == pytest.approx(1.4)  # during training, above the final 0.9
    assert by_subgoals.loc[False, "best_return"] == pytest.approx(0.5)  # the final, above 0.1 and 0.3 during
    assert list(ablation["evals_during_training"]) == [2, 2]
    plain = runs[runs["sweep"] == "c_sensitivity"].dropna(subset=["last_return"])
    assert (plain["best_return"] == plain["last_return"]).all() and (plain["evals_during_training"] == 0).all()


def test_best_normalized_score_is_the_best_return_normalised_and_never_below_the_final_score(report):
    runs = runs_csv(report)
    hopper = runs[(runs["sweep"] == "subgoal_ablation") & (runs["task"] == "hopper-medium-v2")]
    by_subgoals = hopper.set_index("valuable_subgoals")
    assert by_subgoals.loc[True, "best_normalized_score"] == pytest.approx(95.0)  # normalised 95 during training
    assert by_subgoals.loc[False, "best_normalized_score"] == 50.0  # 10 during training, 50 at the end
    d4rl = runs[runs["sweep"] == "d4rl"]
    unevaluated = d4rl[d4rl["evals_during_training"] == 0]
    assert len(unevaluated) and (unevaluated["best_normalized_score"] == unevaluated["normalized_score"]).all()
    assert runs.loc[runs["sweep"] == "grid_world", "best_normalized_score"].isna().all()  # not D4RL


def test_the_export_reads_the_evaluation_history_only_of_runs_that_logged_one(tmp_path, monkeypatch):
    store = Store(tmp_path / "mlflow.db")
    evaluated = store.run("c_sensitivity", "dmh", "darkroom", 0, last_return=1.0, during=[2.0, 0.5])
    store.run("c_sensitivity", "dmh", "darkroom", 1, last_return=1.0)
    fetched = []
    real = MlflowClient.get_metric_history

    def spy(self, run_id, key, *args, **kwargs):
        fetched.append((run_id, key))
        return real(self, run_id, key, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "get_metric_history", spy)
    runs = export_runs(store.uri).runs.set_index("seed")
    assert [r for r, key in fetched if key == Metric.LAST_RETURN_DURING_TRAINING] == [evaluated]
    assert list(runs["best_return"]) == [2.0, 1.0] and list(runs["evals_during_training"]) == [2, 0]


def test_a_return_views_cells_hold_the_best_evaluation_beside_the_final_one(report):
    grid = read(report, "fig4a").set_index(["task", "variant"]).loc[("darkroom-hard", "with_subgoals")]
    assert (grid["mean"], grid["best_mean"], grid["best_n"]) == (pytest.approx(0.9), pytest.approx(1.4), 1)
    assert grid["evaluated_during_training"] == 1
    d4rl = read(report, "fig6").set_index(["task", "variant"]).loc[("hopper-medium-v2", "with_subgoals")]
    assert (d4rl["mean"], d4rl["best_mean"]) == (pytest.approx(90.0), pytest.approx(95.0))
    header = (report / "comparison" / "fig4a.md").read_text().splitlines()[4]
    assert "| ours final mean ± s.e. (seeds) |" in header and "| ours best during training mean ± s.e. (seeds) |" \
        in header
    assert "the paper's protocol" in (report / "comparison" / "fig4a.md").read_text()


def test_a_cell_without_evaluations_during_training_says_its_best_is_the_final_one(report):
    cells = read(report, "fig4b").set_index(["task", "x"])
    c1 = cells.loc[("large-darkroom-hard", 1.0)]
    assert c1["best_mean"] == c1["mean"] and c1["best_n"] == 5 and c1["evaluated_during_training"] == 0
    row = next(line for line in (report / "comparison" / "fig4b.md").read_text().splitlines()
               if line.startswith("| Large Darkroom Hard | DM-H | c=1 |"))
    assert "best = final: no evaluations during training" in row


def test_a_cell_where_some_runs_were_evaluated_during_training_averages_their_best_with_the_others_final(report):
    first = read(report, "table2").set_index(["task", "algo"]).loc[(D4RL_DATASETS[0], "dmh")]
    assert first["mean"] == pytest.approx(81.0)
    assert first["best_mean"] == pytest.approx((95.0 + 82.0) / 2)  # seed 0's 95 during training, seed 1's final
    assert first["evaluated_during_training"] == 1
    assert "best: 1 of 2 runs evaluated during training" in (report / "comparison" / "table2.md").read_text()


def test_views_of_timings_and_curves_have_no_best_columns(report):
    for view in ("fig2", "fig5", "table4_online"):
        assert "best_mean" not in read(report, view).columns, view
        assert "| ours mean ± s.e. (seeds) |" in (report / "comparison" / f"{view}.md").read_text()


# ---------------------------------------------------------------------------------------------------- the z study
Z_TABLE_ORDER = [("darkroom", "block", 2, True), ("darkroom-hard", "step", 2, True),
                 ("darkroom-hard", "block", 2, True), ("darkroom-hard", "mean", 8, True),
                 ("darkroom-hard", "block", 32, False)]


def z_study(report):
    return pd.read_csv(report / "tables" / "z_study.csv")


def test_z_is_the_mean_where_training_uses_it_else_how_a_sample_is_drawn():
    assert z_draw({"model.z_train": "mean", "model.z_draw": "block"}) == "mean"
    assert z_draw({"model.z_train": "sample", "model.z_draw": "step"}) == "step"
    assert z_draw({"model.z_train": "sample", "model.z_draw": "block"}) == "block"
    assert z_draw({"algo": "dt"}) is None


def test_z_study_settings_export_as_z_and_an_integer_z_dim(report):
    runs = runs_csv(report)
    study = runs[runs["sweep"] == "z_study"]
    assert set(zip(study["z"], study["z_dim"], strict=True)) == {("step", 2), ("block", 2), ("mean", 8),
                                                                 ("block", 32)}
    as_written = pd.read_csv(report / "data" / "runs.csv", dtype={"z_dim": str})
    assert set(as_written.loc[as_written["sweep"] == "z_study", "z_dim"]) == {"2", "8", "32"}  # not 2.0
    assert runs.loc[runs["sweep"] == "tmaze", ["z", "z_dim"]].isna().all().all()  # logged no z


def test_z_study_table_has_one_row_per_cell_in_task_subgoals_z_and_z_dim_order(report):
    table = z_study(report)
    assert list(zip(table["task"], table["z"], table["z_dim"], table["valuable_subgoals"], strict=True)) == \
        Z_TABLE_ORDER
    assert "paper" not in " ".join(table.columns)


def test_z_study_cells_hold_final_mean_se_t_interval_best_and_first_episode(report):
    step = z_study(report).iloc[1]
    finals = [0.5, 0.7, 0.9]
    assert (step["n"], step["mean"], step["se"]) == (3, pytest.approx(0.7), pytest.approx(standard_error(finals)))
    assert (step["t_low"], step["t_high"]) == pytest.approx(t_interval(finals))
    assert step["best_mean"] == pytest.approx((0.95 + 0.7 + 0.9) / 3)  # seed 0 scored 0.95 during training
    assert step["evaluated_during_training"] == 1
    assert (step["first_mean"], step["first_n"]) == (pytest.approx(0.2), 3)
    gains = [0.5 - 0.1, 0.7 - 0.2, 0.9 - 0.3]  # each run's final minus its own first episode
    assert step["gain"] == pytest.approx(0.5)
    assert (step["gain_low"], step["gain_high"]) == pytest.approx(t_interval(gains))
    assert step["learns"] == "yes"  # the interval [0.25, 0.75] is above 0
    text = (report / "tables" / "z_study.md").read_text()
    assert ("| Darkroom Hard | step | 2 | on | 0.20 ± 0.06 (3) | 0.70 ± 0.12 (3) | [0.20, 1.20] | +0.50 [+0.25, +0.75] "
            "| yes | 0.85 ± 0.08 |") in text


def test_a_z_cell_of_fewer_than_three_seeds_or_a_gain_that_straddles_zero_is_inconclusive_not_learning(report):
    table = z_study(report).set_index(["task", "z", "z_dim"])
    one_seed = table.loc[("darkroom", "block", 2)]  # 0.0 → 1.0, one seed: no interval
    assert one_seed["gain"] == pytest.approx(1.0) and one_seed["learns"] == "inconclusive"
    two = table.loc[("darkroom-hard", "mean", 8)]  # 0.0 → 0.4 and 0.2 → 0.6: +0.4 at both seeds
    assert (two["gain"], two["gain_low"], two["gain_high"]) == (pytest.approx(0.4),) * 3
    assert two["learns"] == "inconclusive"  # +0.4 at both seeds, a zero-width interval, but two seeds


def test_a_partial_z_study_shows_short_and_unfinished_cells_with_their_reasons(report):
    table = z_study(report).set_index(["task", "z", "z_dim"])
    assert table.loc[("darkroom-hard", "mean", 8), "reason"] == "2 of 3 seeds"
    killed = table.loc[("darkroom-hard", "block", 32)]
    assert killed["n"] == 0 and math.isnan(killed["mean"]) and killed["reason"] == "not finished (killed ×1)"
    text = (report / "tables" / "z_study.md").read_text()
    assert "— (not finished (killed ×1))" in text
    assert "best = final: no evaluations during training" in text  # the mean cell: no run evaluated in training


def test_without_z_study_runs_the_z_table_says_there_are_none(tmp_path):
    store = Store(tmp_path / "mlflow.db")
    store.run("c_sensitivity", "dmh", "darkroom", 0, last_return=1.0, params={**Z_DRAWS["block"],
                                                                             "model.z_dim": 2})
    table = z_table.z_table(export_runs(store.uri))
    assert table.numbers.empty
    assert table.text.iloc[0, 0].startswith("no runs of sweep z_study")


def test_the_index_lists_the_z_study_as_this_projects_table_without_a_paper_number(report):
    index = (report / "index.md").read_text()
    line = next(line for line in index.splitlines() if line.startswith(f"- **{z_table.TITLE}**"))
    assert "4 of 5 cells have completed runs (this project's study: no paper number)" in line
    assert "(tables/z_study.md)" in line


def test_a_cache_exported_before_the_best_and_z_columns_asks_for_a_re_export(report, tmp_path):
    for name in ("runs.csv", "curves.csv", "meta.json"):
        (tmp_path / name).write_bytes((report / "data" / name).read_bytes())
    runs = pd.read_csv(tmp_path / "runs.csv")
    runs.drop(columns=["z", "z_dim", "best_return", "best_normalized_score", "evals_during_training"]).to_csv(
        tmp_path / "runs.csv", index=False)
    with pytest.raises(DmhError, match=r"lacks column.*z, z_dim, best_return.*re-export it"):
        load_export(tmp_path)


def test_the_held_out_loss_of_each_evaluation_reaches_the_training_curves_and_old_caches_still_load(tmp_path):
    from dmh.report.export import save_export

    store = Store(tmp_path / "mlflow.db")
    run_id = store.run("grid_world", "dmh", "darkroom", 0, last_return=5.0, steps=100, during=[2.0])
    store.client.log_metric(run_id, Metric.HELD_OUT_LOSS_DURING_TRAINING, 1.25, step=50)
    store.client.log_metric(run_id, Metric.HELD_OUT_LOSS, 0.75, step=100)
    training = export_runs(store.uri).training
    assert list(training["step"]) == [50, 100] and list(training["held_out_loss"]) == [1.25, 0.75]
    old = export_runs(store.uri)
    save_export(old, tmp_path / "cache")
    frame = pd.read_csv(tmp_path / "cache" / "training.csv").drop(columns="held_out_loss")
    frame.to_csv(tmp_path / "cache" / "training.csv", index=False)  # as a cache exported before the column
    assert load_export(tmp_path / "cache").training["held_out_loss"].isna().all()


def test_the_report_says_which_verdicts_moved_against_an_earlier_reports_runs(report, tmp_path, capsys):
    out = tmp_path / "again"
    assert make_all.main(["--from-cache", str(report), "--out", str(out), "--verdicts-before", str(report)]) == 0
    moved = pd.read_csv(out / "tables" / "claims_moved.csv")
    judged = pd.read_csv(report / "tables" / "claims.csv")
    assert len(moved) == int((judged["n"] > 0).sum()) and not moved["moved"].any()  # the same runs: nothing moved
    assert "claims_moved" in (out / "index.md").read_text()
    assert f"0 of {len(moved)} moved" in capsys.readouterr().out
    assert make_all.main(["--from-cache", str(report), "--out", str(tmp_path / "x"), "--verdicts-before",
                          str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--verdicts-before" in err and "no report cache there" in err
    assert not (tmp_path / "x").exists()
