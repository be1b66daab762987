"""Recipe search per catalog: candidate recipes, successive halving on a validation split, a report."""

from trainer.search.halving import CandidateRun, SearchResult, planned_epochs, run_search
from trainer.search.space import DEFAULT_SEARCH_SPACE, Candidate, SearchSpace, load_search_space

__all__ = ["DEFAULT_SEARCH_SPACE", "Candidate", "CandidateRun", "SearchResult", "SearchSpace",
           "load_search_space", "planned_epochs", "run_search"]
