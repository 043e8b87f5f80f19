"""``spectnode serve`` whose model loading waits until a file exists: a point in the node's start that
a test controls (run as ``python tests/gated_serve.py GATE --config FILE``).

While the gate file is missing the classify stage is held in its model loading, so a study stops at
``complete`` for as long as the test wants; the loader writes ``GATE.waiting`` first, so the test
knows the stage is held there.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectnode import cli
from spectnode.node import worker

if TYPE_CHECKING:
    from spectnode.classify import StudyClassifier

#: How often the held loader looks for the gate file.
POLL_S = 0.05


def gated_loader(gate: Path) -> Any:
    """A classifier loader that loads the bundle only once ``gate`` exists."""

    def load(bundle: Path | None) -> StudyClassifier:
        from spectnode.classify import StudyClassifier

        gate.with_name(gate.name + ".waiting").touch()
        while not gate.exists():
            time.sleep(POLL_S)
        return StudyClassifier.from_bundle(bundle)

    return load


class GatedNode(worker.Node):
    """The node ``spectnode serve`` builds, with the gated loader."""

    gate = Path("model-gate")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["classifier_loader"] = gated_loader(self.gate)
        super().__init__(*args, **kwargs)


if __name__ == "__main__":
    GatedNode.gate = Path(sys.argv[1])
    worker.Node = GatedNode  # type: ignore[misc]  (serve looks the class up when it runs)
    sys.exit(cli.main(["serve", *sys.argv[2:]]))
