"""The running DICOM node: stages wired around the job store, and its commands.

* :class:`~spectnode.node.worker.Node`: receive -> assemble -> classify ->
  report -> dispatch, each stage a thread that shares only the job store.
* :mod:`spectnode.node.commands`: ``serve(cfg)``, ``status(cfg, json)``,
  ``retry(cfg, item_or_study)`` and ``demo(workdir)``, the functions behind
  the ``spectnode`` subcommands of the same names.

TensorFlow is imported only when the classifier loads, so ``status`` and
``retry`` answer quickly.
"""

from spectnode.node.worker import Node, node_paths

__all__ = ["Node", "node_paths"]
