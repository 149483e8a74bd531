"""The project's shared names: every string that one layer writes and another reads.

Training writes metrics and tags, sweeps report them to Tune and add their own, ``dmh.report`` reads them back from
MLflow. A name spelled twice drifts: renaming a metric in training would silently empty the report. So each name
lives here once and every layer imports it (``tests/test_vocabulary.py`` checks that the report reads what a real
training run writes).

Task families come from where they are defined (the Grid World and D4RL environment modules); this module only
names them for the layers above.
"""

from __future__ import annotations

from typing import ClassVar

from dmh.envs.gridworld import FAMILIES
from dmh.envs.mujoco import D4RL_DATASETS, D4RL_ENVS


class Metric:
    """MLflow metric keys."""

    TRAIN_LOSS = "train/loss"  # mean action loss over the last log_every updates (step = gradient update)
    EVAL_RETURN = "eval/return"  # the in-context curve: mean return over test tasks (step = online episode index)
    LAST_RETURN = "eval/last_return"  # return of the last online episode, mean over test tasks (the paper's score)
    LAST_RETURN_DURING_TRAINING = "eval/last_return_during_training"  # the same, at eval_every during training
    FIRST_RETURN = "eval/first_return"  # return of the first online episode, mean over test tasks (before any
    # in-context learning: the training curve's lower line)
    FIRST_RETURN_DURING_TRAINING = "eval/first_return_during_training"  # the same, at eval_every during training
    LAST_RETURN_SE = "eval/last_return_se"  # standard error over test tasks of LAST_RETURN (an evaluation's own
    # noise, which the plateau rule compares changes with)
    LAST_RETURN_SE_DURING_TRAINING = "eval/last_return_se_during_training"  # the same, at eval_every during training
    TRAIN_LOSS_Z = "train/loss_z"  # DM-H: the z branch's action loss (train/loss adds 0.5 x the f(s_g) branch's)
    TRAIN_LOSS_GOAL = "train/loss_goal"  # DM-H: the valuable-sub-goal branch's action loss, with z = f(s_g)
    HELD_OUT_LOSS = "eval/held_out_loss"  # the model's loss (eval mode) on one fixed batch of learning histories of
    # the held-out tasks (Grid World): against train/loss, whether it still learns what transfers
    HELD_OUT_LOSS_DURING_TRAINING = "eval/held_out_loss_during_training"  # the same, at eval_every during training
    NORMALIZED_SCORE = "eval/normalized_score"  # D4RL normalised last-episode score
    ONLINE_MIN = "time/online_min"  # minutes of online evaluation (paper Table 4, Fig. 3b)
    OFFLINE_H_PER_10K = "time/offline_h_per_10k_updates"  # training hours per 10k updates (Table 4, Fig. 5)
    TRAIN_SECONDS = "time/train_seconds"  # seconds of training (reported to Tune, not logged to MLflow)
    OOM = "oom"  # 1 when the run ran out of memory (a result in the paper's Fig. 3), else 0

    # What the report summarises per run (the final value of each), and what a run logs only as a diagnostic.
    RESULTS = (LAST_RETURN, NORMALIZED_SCORE, ONLINE_MIN, OFFLINE_H_PER_10K, OOM, TRAIN_LOSS)
    DIAGNOSTICS = (LAST_RETURN_DURING_TRAINING, FIRST_RETURN_DURING_TRAINING, LAST_RETURN_SE_DURING_TRAINING,
                   FIRST_RETURN, LAST_RETURN_SE, TRAIN_LOSS_Z, TRAIN_LOSS_GOAL, HELD_OUT_LOSS,
                   HELD_OUT_LOSS_DURING_TRAINING)
    # The parts a model's loss reports beside the total (``model.loss`` returns them by these names) → their keys.
    LOSS_PARTS: ClassVar[dict[str, str]] = {"loss_z": TRAIN_LOSS_Z, "loss_goal": TRAIN_LOSS_GOAL}
    CURVE = EVAL_RETURN


class Tag:
    """MLflow tag keys that dmh sets and reads (provenance tags such as ``git_commit`` stay in ``dmh.tracking``)."""

    TASK = "task"
    ALGO = "algo"
    SWEEP = "sweep"  # the sweep script's name (the report's views select by it)
    SWEEP_RUN = "sweep_run"  # the sweep's Tune folder: one sweep among several of the same script
    TRIAL_ID = "trial_id"  # Tune's trial id
    WORKER_PID = "worker_pid"
    RAY_CLUSTER = "ray_cluster"  # GCS address of the Ray cluster that ran the trial
    RAY_NODE = "ray_node"  # Ray node id of the worker that ran the trial
    STATUS_DETAIL = "status_detail"  # one of Outcome's values: why a run ended as it did
    SWEEP_PARENT = "sweep_parent"  # "true" on a sweep's parent run, which groups its trials and is not a trial


class Outcome:
    """Values of the ``status_detail`` tag, and the outcomes the report counts as results."""

    RUNNING = "running"
    COMPLETED = "completed"  # FINISHED with a final evaluation
    OUT_OF_MEMORY = "out_of_memory"  # a recorded result, not an error (paper Fig. 3)
    STOPPED = "stopped"  # ASHA or an interrupted driver stopped it; --resume reopens it
    SUPERSEDED = "superseded_by_restart"  # an attempt that died before its first checkpoint (deleted)
    UNEVALUATED = "unevaluated"  # FINISHED without a final evaluation (the report's word, not a tag value)

    RESULTS = (COMPLETED, OUT_OF_MEMORY)


# Config fields that say where a run executes, not what it computes: a checkpoint made on a GPU continues on a CPU,
# and run names, resume checks and the report's trial keys ignore them.
RUNTIME_FIELDS = ("threads", "device")
# Logged params of the same kind (folders, the experiment, the Mamba backend actually used), for the report.
RUNTIME_PARAMS = (*RUNTIME_FIELDS, "run_dir", "data_dir", "backend", "experiment", "model.mamba_backend",
                  "device_used", "gpu_name")

GRID_WORLD = tuple(family.name for family in FAMILIES.values())  # the six families, small ones first
D4RL_FAMILIES = D4RL_ENVS  # halfcheetah, hopper, walker2d
D4RL_TASKS = D4RL_DATASETS  # the paper's nine datasets
TMAZE_PREFIX = "tmaze-"  # tmaze-<memory length>

