"""The running DICOM node: its stages, the threads that run them, and its commands.

* :mod:`spectnode.node.stages`: receive -> assemble -> classify -> report ->
  dispatch, one module per stage, sharing only the job store;
* :class:`~spectnode.node.worker.Node`: wires one thread to each stage;
* :class:`~spectnode.node.datadir.DataDir`: the layout of the data directory;
* :mod:`spectnode.node.status`: what ``spectnode status`` shows;
* :mod:`spectnode.node.commands`: ``serve``, ``status``, ``retry`` and
  ``demo``, the functions behind the ``spectnode`` subcommands.

TensorFlow is imported only when the classifier loads, so ``status`` and
``retry`` answer quickly; importing this package imports no stage.
"""
