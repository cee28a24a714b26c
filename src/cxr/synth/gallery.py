"""A gallery of the synthetic findings: one radiograph per finding (and one without), its box drawn in red.

Regenerate the documentation's picture with ``python -m cxr.synth.gallery docs/synthetic.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from cxr.labels import FINDINGS, NO_FINDING
from cxr.synth.anatomy import sample_pose
from cxr.synth.phantom import render, sample_patient

TITLE_HEIGHT = 22


def gallery(size: int = 256, seed: int = 0, columns: int = 5) -> np.ndarray:
    """A BGR mosaic: No Finding then each finding alone on its own patient, boxes drawn, titled by name."""
    tiles = []
    for index, name in enumerate((NO_FINDING, *FINDINGS)):
        rng = np.random.default_rng([seed, index])
        person = sample_patient(rng, index, "F" if index % 2 else "M")
        radiograph = render(person, sample_pose(rng, "PA"), [] if name == NO_FINDING else [name], size, rng)
        tile = cv2.cvtColor(radiograph.image, cv2.COLOR_GRAY2BGR)
        for x, y, w, h in radiograph.boxes.values():
            cv2.rectangle(tile, (int(x), int(y)), (int(x + w - 1), int(y + h - 1)), (40, 40, 230), 1)
        title = np.full((TITLE_HEIGHT, size, 3), 255, np.uint8)
        cv2.putText(title, name, (4, TITLE_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.vstack([title, tile]))
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def main(argv: list[str]) -> None:
    """Write the gallery to the path given (default ``docs/synthetic.png``)."""
    path = Path(argv[0] if argv else "docs/synthetic.png")
    cv2.imwrite(str(path), gallery(size=224), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
