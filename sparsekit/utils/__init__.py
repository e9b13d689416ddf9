"""Internal utilities shared by the estimators."""
