"""Ray Tune sweeps over ``dmh train`` for the paper's experiments; ``sweeps.common`` holds the shared machinery."""
