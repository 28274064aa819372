"""A test-only detector family that answers the true boxes of procedural scenes (``oracle``), optionally
jittered: a teacher whose box recall / precision is known, for the autolabel measurement and fusion.

The model file maps the SHA-1 of each decoded image's RGB bytes to its true boxes; ``options.jitter``
shifts every box right by a seeded fraction of its width drawn from ``[0, jitter]`` (a shift above
1/3 of the width drops its IoU below 0.5) and ``options.score`` is every box's score.

Usage::

    from tests.support.oracle_teacher import register, write_truth
    truth = write_truth(tmp_path / "truth.json", samples)
    register()                                          # family "oracle" (the test's registry fixture undoes it)
    natix-miner autolabel --teachers oracle=truth.json,...
"""

import hashlib
import json
import typing
from pathlib import Path

import numpy as np
import pydantic

from natix_miner.experts.detection import ROADWORK_CLASSES, ClosedSetOptions, DetectorExpert, Detections, rgb_of


def image_key(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def write_truth(path: Path, samples, classes: typing.Sequence[str] = ROADWORK_CLASSES) -> Path:
    """The true boxes of ``samples`` keyed by their decoded pixels, as the teachers receive them."""
    from natix_miner.imaging.decode import decode_bytes
    from natix_miner.training.autolabel import true_boxes

    doc = {}
    for s in samples:
        boxes, names = true_boxes(s, classes)
        doc[image_key(decode_bytes(s.bytes(), eager=True).rgb)] = [[c] + b.tolist() for c, b in zip(names, boxes)]
    Path(path).write_text(json.dumps(doc))
    return Path(path)


class OracleOptions(ClosedSetOptions):
    classes: typing.Dict[str, typing.Union[str, typing.List[str]]] = {c: [c] for c in ROADWORK_CLASSES}
    """Roadwork class -> the names in the truth file (default: the roadwork classes themselves)."""
    jitter: float = pydantic.Field(default=0.0, ge=0)
    """Each box moves right by a fraction of its width drawn from [0, jitter]."""
    score: float = pydantic.Field(default=0.9, ge=0, le=1)
    """Every box's score."""
    seed: int = 0
    """Seed of the jitter."""


class OracleTeacher(DetectorExpert):
    family = "oracle"
    Options = OracleOptions

    def load_model(self, device: str) -> None:
        self.truth = json.loads(Path(self.spec.model).read_text())
        self.jitter, self.score = self.opts.jitter, self.opts.score
        self.rng = np.random.default_rng(self.opts.seed)

    def detect(self, images) -> typing.List[Detections]:
        out = []
        for im in images:
            rgb = rgb_of(im)
            rows = self.truth.get(image_key(rgb), [])
            boxes = np.asarray([r[1:] for r in rows], np.float32).reshape(-1, 4)
            if self.jitter and len(boxes):
                shift = self.rng.uniform(0, self.jitter, len(boxes)) * (boxes[:, 2] - boxes[:, 0])
                boxes[:, [0, 2]] += shift[:, None]
            out.append(Detections(boxes, np.full(len(boxes), self.score), [r[0] for r in rows],
                                  np.full(len(boxes), -1), rgb.shape[:2]))
        return out


def register() -> None:
    from natix_miner.experts import register_family

    register_family("oracle", "tests.support.oracle_teacher:OracleTeacher")
