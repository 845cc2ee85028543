"""Word overlap between item titles: the idf mass of a candidate's title words that other titles share.

A mean sentence embedding of a partial outfit dilutes the words that tie an outfit together (a brand, a colour,
a collection name); this measure keeps them. The score of candidate ``c`` for a set of items ``P`` is

    overlap(c, P) = sum of idf(t) over the distinct words t of c's title that occur in some title of P,
    idf(t) = max(0, log(N / (1 + df(t))))

with ``N`` titles and ``df(t)`` the number of titles containing ``t``, both counted over the titles the table is
built on (the catalog). Words are runs of letters and digits, lower-cased; CJK / kana / hangul characters count
one word each (titles in those scripts have no spaces). No learned part: the weight it gets beside a model's
score is chosen on validation data (``AdapterConfig.outfit_word_weight``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["WordOverlap", "words_of"]

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


def words_of(text: str) -> list[str]:
    """The distinct words of ``text`` in order of first occurrence (lower-cased; see the module docstring)."""
    return list(dict.fromkeys(_WORD.findall(str(text).lower())))


class WordOverlap:
    """idf-weighted word overlap over a fixed list of titles (rows 0 .. N-1, e.g. a guide's index rows).

    >>> w = WordOverlap(["black leather boots", "black tee", "red skirt"])
    >>> w.scores([1], [0, 2]).round(3).tolist()   # "black" (in 2 of 3 titles): log(3 / 3) = 0
    [0.0, 0.0]
    """

    def __init__(self, titles: Sequence[str]) -> None:
        if isinstance(titles, str):
            raise ValueError("titles must be a list of strings (one per item), got a single string")
        vocab: dict[str, int] = {}
        indices: list[int] = []
        indptr = [0]
        for title in titles:
            indices.extend(vocab.setdefault(w, len(vocab)) for w in words_of(title))
            indptr.append(len(indices))
        self.vocab = vocab
        self.indices = np.asarray(indices, dtype=np.int64)
        self.indptr = np.asarray(indptr, dtype=np.int64)
        df = np.bincount(self.indices, minlength=len(vocab)).astype(np.float64)
        n = len(self.indptr) - 1
        self.idf = np.maximum(0.0, np.log(max(n, 1) / (1.0 + df))).astype(np.float32)

    def __len__(self) -> int:
        """Number of titles (rows)."""
        return len(self.indptr) - 1

    def _rows(self, rows: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{what}: rows must lie in [0, {len(self)}), got {int(rows.min())}..{int(rows.max())}")
        return rows

    def _words(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(word ids of ``rows``' titles concatenated, the position in ``rows`` each word belongs to)."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        owner = np.repeat(np.arange(len(rows)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return self.indices[np.repeat(starts, lengths) + offsets], owner

    def seen(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Boolean mask over the vocabulary: the words of the titles of ``rows``."""
        mask = np.zeros(len(self.vocab), dtype=bool)
        mask[self._words(self._rows(rows, "rows"))[0]] = True
        return mask

    def scores(self, partial: Sequence[int] | np.ndarray, candidates: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(candidates),) float32: each candidate's overlap with the titles of ``partial``."""
        cand = self._rows(candidates, "candidates")
        mask = self.seen(partial)
        words, owner = self._words(cand)
        return np.bincount(owner, self.idf[words] * mask[words], minlength=len(cand)).astype(np.float32)

    def pair_scores(self, partials: Sequence[Sequence[int]], candidates: np.ndarray) -> np.ndarray:
        """(Q, C) float32: candidate ``candidates[q, c]``'s overlap with the titles of ``partials[q]``."""
        cand = np.asarray(candidates, dtype=np.int64)
        if cand.ndim != 2 or len(cand) != len(partials):
            raise ValueError(f"candidates must be a (Q, C) array with Q = {len(partials)} (one row per partial "
                             f"outfit), got shape {cand.shape}")
        return np.stack([self.scores(p, c) for p, c in zip(partials, cand)]) if len(cand) else \
            np.zeros(cand.shape, dtype=np.float32)
