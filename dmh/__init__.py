"""dmh: Decision Mamba-Hybrid (Huang et al., NeurIPS 2024) and its baselines, environments and in-context RL data.

Importing ``dmh`` registers the project's gymnasium environments (``dmh/Darkroom-v0`` …, ``dmh/TMaze-v0`` …).
"""

from dmh.envs import register_envs

__version__ = "0.1.0"

register_envs()
