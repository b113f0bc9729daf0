"""punch."""
