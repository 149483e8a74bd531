"""The benchmark suite behind the paper's speed claims (Table 4, §7): `python -m benchmarks [--quick] [--only PART]`.

Parts: `online` (per-step cost through `model.policy`, Table 4's online minutes), `offline` (seconds per gradient
update), `scan` (the selective scan alone, and one recurrent step), `data` (learning-history generation). Every part
reports medians of repetitions and the ratios between models measured in the same run; see docs/benchmarks.md.
"""
