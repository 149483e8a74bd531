"""Ray Tune sweeps over ``dmh train`` for the paper's experiments: thin scripts that declare their grids over
:mod:`dmh.sweep`, where the shared machinery lives."""
