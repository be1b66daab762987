"""Serving queries from the active index: state, fresh set, hot swap, the search itself."""

from service.searcher.engine import Match, SearchResult, score_of
from service.searcher.searcher import (
    BadVector,
    IndexUnavailable,
    ItemNotFound,
    ModelUnavailable,
    NotEmbedded,
    Searcher,
    SearchError,
    unit_vector,
)
from service.searcher.state import SearchState

__all__ = [
    "BadVector", "IndexUnavailable", "ItemNotFound", "Match", "ModelUnavailable", "NotEmbedded",
    "SearchError", "SearchResult", "SearchState", "Searcher", "score_of", "unit_vector",
]
