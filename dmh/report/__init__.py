"""The report: tracked MLflow runs → the paper's tables and figures, beside the paper's own numbers (``dmh report``,
``python -m dmh.report.make_all``; README.md in this folder lists the modules and outputs).

Layering: the top of the library. It reads only tracked results (through ``dmh.tracking`` and ``dmh.vocabulary``)
and ``paper_numbers.csv`` beside these modules, shipped as package data so an installed ``dmh`` reports without a
checkout. Nothing else in ``dmh`` imports it except the ``dmh report`` command, lazily.
"""
