"""The node's models: loaded once, on first use, by whichever stage needs them first.

TensorFlow takes seconds to start, so the node preloads the models in the
background at start-up (:meth:`NodeModels.preload`); a stage that needs them
before that has finished waits for it. A model that cannot be loaded is
logged once by the preload and raised to every study that needs it, which
then ends in ``error`` with the message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spectnode.classify import Classifiers, StudyClassifier
    from spectnode.report import AlgorithmInfo

__all__ = ["ClassifierLoader", "NodeModels"]

_log = logging.getLogger("spectnode.node")

#: Loads a classifier from a bundle folder (None: the shipped default).
ClassifierLoader = Callable[[Path | None], "StudyClassifier"]


class NodeModels:
    """The classifiers of a node and their :class:`~spectnode.report.AlgorithmInfo`, in order.

    Args:
        bundles: The model bundles (None or empty: the shipped ones,
            :data:`spectnode.classify.DEFAULT_BUNDLES`).
        loader: Loads one classifier (default
            :meth:`spectnode.classify.StudyClassifier.from_bundle`; tests pass
            their own).
    """

    def __init__(self, bundles: Sequence[Path] | None, loader: ClassifierLoader | None = None) -> None:
        self.bundles = tuple(bundles or ())
        self._loader = loader
        self._lock = threading.Lock()
        self._classifiers: Classifiers | None = None
        self._algorithms: dict[str, AlgorithmInfo] = {}

    def _paths(self) -> Sequence[Path | None]:
        from spectnode.classify import bundle_paths

        return bundle_paths(self.bundles)

    def classifiers(self) -> Classifiers:
        """The loaded classifiers (loaded now if they are not yet).

        Raises:
            Exception: Whatever loading a bundle raised.
        """
        with self._lock:
            if self._classifiers is None:
                from spectnode.classify import Classifiers, StudyClassifier
                from spectnode.report import AlgorithmInfo

                loader = self._loader or StudyClassifier.from_bundle
                started = time.monotonic()
                loaded = [loader(path) for path in self._paths()]
                names = [c.card.name for c in loaded]
                if len(set(names)) != len(names):
                    raise ValueError(f"two bundles have the same model name: {names}; results could not be told apart")
                self._algorithms = {c.card.name: AlgorithmInfo.from_card(c.card) for c in loaded}
                self._classifiers = Classifiers(loaded)
                _log.info("model(s) %s loaded in %.1f s",
                          ", ".join(f"{c.card.name} {c.card.version} ({c.card.architecture}, {c.spec.mode})"
                                    for c in loaded), time.monotonic() - started)
            return self._classifiers

    def algorithms(self) -> dict[str, AlgorithmInfo]:
        """Each model's identification in reports, by model name, in order (loads the models if needed)."""
        self.classifiers()
        return dict(self._algorithms)

    def preload(self) -> None:
        """Load the models now; a failure is logged, not raised (the studies will carry it)."""
        try:
            self.classifiers()
        except Exception as exc:  # noqa: BLE001 - reported on each study that needs the models
            where = ", ".join(map(str, self.bundles)) or "the shipped default bundles"
            _log.error("the model cannot be loaded from %s: %s: %s", where, type(exc).__name__, exc)
