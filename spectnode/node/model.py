"""The node's model: loaded once, on first use, by whichever stage needs it first.

TensorFlow takes seconds to start, so the node preloads the model in the
background at start-up (:meth:`NodeModel.preload`); a stage that needs it
before that has finished waits for it. A model that cannot be loaded is
logged once by the preload and raised to every study that needs it, which
then ends in ``error`` with the message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spectnode.classify import StudyClassifier
    from spectnode.report import AlgorithmInfo

__all__ = ["ClassifierLoader", "NodeModel"]

_log = logging.getLogger("spectnode.node")

#: Loads a classifier from a bundle folder (None: the shipped default).
ClassifierLoader = Callable[[Path | None], "StudyClassifier"]


class NodeModel:
    """The classifier of a node and its :class:`~spectnode.report.AlgorithmInfo`.

    Args:
        bundle: The model bundle (None: the shipped default).
        loader: Loads the classifier (default
            :meth:`spectnode.classify.StudyClassifier.from_bundle`; tests pass
            their own).
    """

    def __init__(self, bundle: Path | None, loader: ClassifierLoader | None = None) -> None:
        self.bundle = bundle
        self._loader = loader
        self._lock = threading.Lock()
        self._classifier: StudyClassifier | None = None
        self._algorithm: AlgorithmInfo | None = None

    def classifier(self) -> StudyClassifier:
        """The loaded classifier (loaded now if it is not yet).

        Raises:
            Exception: Whatever loading the bundle raised.
        """
        with self._lock:
            if self._classifier is None:
                from spectnode.report import AlgorithmInfo

                loader = self._loader
                if loader is None:
                    from spectnode.classify import StudyClassifier

                    loader = StudyClassifier.from_bundle
                started = time.monotonic()
                classifier = loader(self.bundle)
                self._algorithm = AlgorithmInfo.from_card(classifier.card)
                self._classifier = classifier
                _log.info("model %s %s (%s) loaded in %.1f s", classifier.card.name, classifier.card.version,
                          classifier.card.architecture, time.monotonic() - started)
            return self._classifier

    def algorithm(self) -> AlgorithmInfo:
        """The classifier's identification in reports (loads the classifier if needed)."""
        self.classifier()
        assert self._algorithm is not None
        return self._algorithm

    def preload(self) -> None:
        """Load the model now; a failure is logged, not raised (the studies will carry it)."""
        try:
            self.classifier()
        except Exception as exc:  # noqa: BLE001 - reported on each study that needs the model
            _log.error("the model cannot be loaded from %s: %s: %s", self.bundle or "the shipped default bundle",
                       type(exc).__name__, exc)
