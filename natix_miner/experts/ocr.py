"""OCR of road-sign text (``rapidocr-onnxruntime``, real PP-OCRv4 models shipped in the wheel) matched
against a multilingual roadwork vocabulary, tolerant of OCR errors.

No text read -> the expert abstains (``Evidence(abstain=True)``). Text that matches roadwork
vocabulary ("ROAD WORK AHEAD", "Baustelle", "travaux", "lavori in corso", "roboty drogowe", ...)
-> a high probability scaled by the match quality, the term's strength and the OCR confidence.
Text with no match -> ``no_match_probability`` (mild evidence against; ``null`` abstains instead).

Matching: text is lower-cased, accents stripped (``desvío`` -> ``desvio``, ``ß`` -> ``ss``), common
OCR digit/letter confusions folded (``R0AD W0RK``), spaces ignored (``ROADWORK`` = ``road work``).
Terms of six letters or more tolerate OCR edits (Levenshtein, ``floor(n * (1 - threshold))`` for n
letters: ``constitution`` is not ``construction``), also inside a longer word
(``Baustellenausfahrt``); shorter terms must match a whole word exactly.

Profile entry::

    - name: ocr
      family: ocr
      model: store:rapidocr-ppocrv4        # optional; default: the models inside the wheel
      max_batch: 4
      options:
        threshold: 0.8                     # match quality: 1 - edits / letters
        match_probability: 0.95            # P(roadwork) for a perfect, strong, confident match
        no_match_probability: 0.45         # text read, nothing matched (null: abstain)
        min_text_score: 0.5                # drop OCR lines below this confidence
        extra_terms: {"mot de passe": 0.0} # term -> strength 0..1 (adds or overrides)
        threads: 2                         # onnxruntime intra-op threads (default: runtime's choice)
        engine: {det_limit_side_len: 736}  # passed to RapidOCR(...)

Evidence detail: ``text`` (all lines read), ``lines`` ([text, score]), ``matches``
([term, read, ratio]).
"""

import logging
import typing
import unicodedata
from pathlib import Path

import numpy as np
import pydantic

from natix_miner.config import DTYPES
from natix_miner.experts.base import Evidence, Expert, ExpertOptions

log = logging.getLogger("natix_miner.experts.ocr")

# term -> strength (1.0: unambiguous roadwork; lower: often but not only roadwork)
VOCABULARY: typing.Dict[str, float] = {
    # English
    "road work": 1.0, "road works": 1.0, "roadwork": 1.0, "work zone": 1.0, "construction": 0.9,
    "construction zone": 1.0, "men at work": 1.0, "workers ahead": 1.0, "work ahead": 0.9,
    "lane closed": 0.9, "lanes closed": 0.9, "road closed": 0.8, "detour": 0.9, "diversion": 0.8,
    "flagger ahead": 1.0, "one lane road": 0.8, "utility work": 0.9, "end road work": 1.0,
    "lane ends": 0.5, "road narrows": 0.6, "uneven lanes": 0.7, "loose chippings": 0.8,
    # German
    "baustelle": 1.0, "bauarbeiten": 1.0, "strassenarbeiten": 1.0, "umleitung": 0.9,
    "fahrbahnverengung": 0.8, "vollsperrung": 0.8, "gesperrt": 0.6, "baustellenausfahrt": 1.0,
    # French
    "travaux": 1.0, "chantier": 1.0, "deviation": 0.9, "route barree": 0.8, "fin de chantier": 1.0,
    # Spanish / Portuguese
    "obras": 1.0, "desvio": 0.9, "obras en la via": 1.0, "trabajos": 0.7, "carril cortado": 0.8,
    "homens a trabalhar": 1.0, "obras na via": 1.0,
    # Italian
    "lavori in corso": 1.0, "lavori": 0.9, "cantiere": 1.0, "deviazione": 0.9, "strada chiusa": 0.8,
    # Polish / Czech / Slovak
    "roboty drogowe": 1.0, "objazd": 0.9, "remont drogi": 1.0, "prace na silnici": 1.0, "objizdka": 0.9,
    # Dutch / Nordic
    "werk in uitvoering": 1.0, "wegwerkzaamheden": 1.0, "werkzaamheden": 0.9, "omleiding": 0.9,
    "vagarbete": 1.0, "vejarbejde": 1.0, "vegarbeid": 1.0, "tietyo": 1.0,
    # Hungarian / Romanian / Greek (transliterated) / Turkish
    "utepites": 1.0, "terelés": 0.8, "lucrari": 0.9, "ocolire": 0.8, "yol calismasi": 1.0,
}
_CONFUSIONS = str.maketrans({"0": "o", "1": "l", "5": "s", "|": "l", "$": "s", "€": "e"})
FUZZY_MIN_LEN = 6
PARTIAL_MIN_LEN = 7


def normalize(text: str) -> str:
    """Lower-case, no accents, OCR confusions folded, runs of non-letters -> one space."""
    t = unicodedata.normalize("NFKD", text.replace("ß", "ss").replace("ẞ", "ss"))
    t = "".join(ch for ch in t if not unicodedata.combining(ch)).lower().translate(_CONFUSIONS)
    return " ".join("".join(ch if ch.isalnum() else " " for ch in t).split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _distance(term: str, read: str, partial: bool) -> int:
    """Edit distance of ``term`` to ``read``, or to its best slice when ``partial``."""
    d = edit_distance(term, read)
    if partial:
        n = len(term)
        for size in (n - 1, n, n + 1):
            for i in range(len(read) - size + 1):
                d = min(d, edit_distance(term, read[i:i + size]))
    return d


def match_terms(text: str, vocabulary: typing.Mapping[str, float] = VOCABULARY,
                threshold: float = 0.8) -> typing.List[typing.Tuple[str, str, float]]:
    """Roadwork terms found in ``text``: ``[(term, what was read, quality)]``, best first.

    A term of n letters (spaces ignored) tolerates ``floor(n * (1 - threshold))`` edits (0.8: one
    edit up to 9 letters, two up to 14, ...); terms shorter than six letters must match exactly.
    ``quality`` = 1 - edits / n.
    """
    words = normalize(text).split()
    found: typing.Dict[str, typing.Tuple[str, str, float]] = {}
    for raw_term in vocabulary:
        term_words = normalize(raw_term).split()
        term = "".join(term_words)
        if not term:
            continue
        allowed = 0 if len(term) < FUZZY_MIN_LEN else int(len(term) * (1.0 - threshold) + 1e-9)
        best: typing.Optional[typing.Tuple[int, str]] = None
        k = len(term_words)
        for size in sorted({max(1, k - 1), k, k + 1}):
            for i in range(len(words) - size + 1):
                window = words[i:i + size]
                read = "".join(window)
                if allowed == 0:
                    d = 0 if window == term_words else len(term)
                else:
                    if abs(len(read) - len(term)) > allowed and not (size == 1 and len(term) >= PARTIAL_MIN_LEN):
                        continue
                    d = _distance(term, read, partial=size == 1 and len(term) >= PARTIAL_MIN_LEN
                                  and len(read) > len(term))
                if d <= allowed and (best is None or d < best[0]):
                    best = (d, " ".join(window))
        if best is not None:
            found[raw_term] = (raw_term, best[1], round(1.0 - best[0] / len(term), 4))
    return sorted(found.values(), key=lambda m: -m[2] * vocabulary[m[0]])


Probability = typing.Annotated[float, pydantic.Field(ge=0, le=1)]


class Options(ExpertOptions):
    """Options of the ``ocr`` family (``natix-miner experts options ocr``). ONNX models: ``dtype``
    is ignored (every value accepted)."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = DTYPES
    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("rapidocr_onnxruntime",)

    threshold: float = pydantic.Field(default=0.8, gt=0, le=1)
    """Match quality (1 - edits / letters) a vocabulary term needs; terms under six letters match exactly."""
    match_probability: Probability = 0.95
    """P(roadwork) for a perfect, strong, confident match."""
    no_match_probability: typing.Optional[Probability] = 0.45
    """P(roadwork) when text was read but nothing matched; None: abstain instead."""
    min_text_score: Probability = 0.5
    """OCR lines below this confidence are dropped."""
    extra_terms: typing.Dict[str, Probability] = pydantic.Field(default_factory=dict)
    """Vocabulary term -> strength (adds or overrides; 0 removes a built-in term)."""
    threads: typing.Optional[int] = pydantic.Field(default=None, ge=1)
    """onnxruntime intra-op threads; None: the runtime's choice."""
    engine: typing.Dict[str, typing.Any] = pydantic.Field(default_factory=dict)
    """Keyword arguments passed to ``RapidOCR(...)`` (e.g. ``det_limit_side_len: 736``)."""


class OcrExpert(Expert):
    family = "ocr"
    Options = Options

    def load(self, device: str) -> None:
        from rapidocr_onnxruntime import RapidOCR

        o = self.opts
        self.threshold = o.threshold
        self.match_p = o.match_probability
        self.no_match_p = o.no_match_probability
        self.min_score = o.min_text_score
        self.vocabulary = dict(VOCABULARY)
        self.vocabulary.update(o.extra_terms)
        self.vocabulary = {t: s for t, s in self.vocabulary.items() if s > 0}
        kwargs = dict(o.engine)
        if o.threads:
            kwargs.setdefault("intra_op_num_threads", o.threads)
            kwargs.setdefault("inter_op_num_threads", 1)
        model_dir = self.resolve_model()
        if model_dir:
            d = Path(model_dir)
            for part, pattern in (("det", "*det*.onnx"), ("cls", "*cls*.onnx"), ("rec", "*rec*.onnx")):
                hits = sorted(d.glob(pattern))
                if not hits:
                    raise FileNotFoundError(f"expert {self.name}: no {pattern} in {d}")
                kwargs.setdefault(f"{part}_model_path", str(hits[0]))
        self.use_cuda = False
        if device.startswith("cuda"):
            import onnxruntime

            self.use_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
            for part in ("det", "cls", "rec"):
                kwargs.setdefault(f"{part}_use_cuda", self.use_cuda)
        self.engine = RapidOCR(**kwargs)
        self.model_files = [kwargs.get(f"{p}_model_path") for p in ("det", "cls", "rec")]
        self.device = "cuda" if self.use_cuda else "cpu"
        log.info("%s: RapidOCR on %s, %d vocabulary terms", self.name, self.device, len(self.vocabulary))

    def read(self, rgb: np.ndarray) -> typing.List[typing.Tuple[str, float]]:
        """Lines of text read from an RGB image: ``[(text, score)]``."""
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        result, _ = self.engine(bgr)
        lines = []
        for item in result or []:
            text, score = str(item[1]), float(item[2])
            if score >= self.min_score and sum(ch.isalnum() for ch in text) >= 2:
                lines.append((text, score))
        return lines

    def evidence(self, lines: typing.List[typing.Tuple[str, float]]) -> Evidence:
        text = " ".join(t for t, _ in lines)
        detail = {"text": text, "lines": [[t, round(s, 4)] for t, s in lines], "matches": []}
        if not lines:
            return Evidence(0.5, abstain=True, detail=detail)
        best = 0.0
        for term, read, ratio in match_terms(text, self.vocabulary, self.threshold):
            conf = max((s for t, s in lines if any(w in normalize(t).split() for w in normalize(read).split())),
                       default=min(s for _, s in lines))
            best = max(best, ratio * self.vocabulary[term] * conf)
            detail["matches"].append([term, read, ratio])
        if best > 0:
            floor = 0.5 if self.no_match_p is None else self.no_match_p
            return Evidence(floor + (self.match_p - floor) * best, detail=detail)
        if self.no_match_p is None:
            return Evidence(0.5, abstain=True, detail=detail)
        return Evidence(self.no_match_p, detail=detail)

    def predict_batch(self, images) -> typing.List[Evidence]:
        return [self.evidence(self.read(getattr(im, "rgb", im))) for im in images]

    def warmup(self) -> None:
        self.read(np.full((224, 224, 3), 128, np.uint8))

    def memory_bytes(self) -> int:
        """The ONNX files' size (onnxruntime holds about that much per session, plus arenas)."""
        engine = getattr(self, "engine", None)
        paths = [p for p in getattr(self, "model_files", []) if p]
        if engine is not None and not paths:
            import rapidocr_onnxruntime

            paths = [str(p) for p in (Path(rapidocr_onnxruntime.__file__).parent / "models").glob("*.onnx")]
        return sum(Path(p).stat().st_size for p in paths if Path(p).exists())
