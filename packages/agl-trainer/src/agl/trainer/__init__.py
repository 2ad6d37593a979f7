"""agl trainer: algorithms (plugins) that train agents from their rollouts and traces.

from agl.trainer import Trainer
Trainer("baseline", store=open_store("memory://")).fit(agent, train_dataset=tasks)
"""

from agl.trainer.algorithm import Algorithm, AlgorithmContext, RolloutsIncomplete
from agl.trainer.hookspecs import hookimpl
from agl.trainer.plugins import PluginFailure, PluginManager, algorithms, plugin_manager
from agl.trainer.trainer import Trainer, UnknownAlgorithm
from agl.trainer.version import __version__

__all__ = [
    "Algorithm",
    "AlgorithmContext",
    "PluginFailure",
    "PluginManager",
    "RolloutsIncomplete",
    "Trainer",
    "UnknownAlgorithm",
    "__version__",
    "algorithms",
    "hookimpl",
    "plugin_manager",
]
