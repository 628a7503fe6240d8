"""SeaM: search-based model re-engineering."""
