"""Repository-wide pytest set-up, loaded before any test module imports scipy or scikit-learn."""

import os

# scikit-learn's estimator checks include check_array_api_input, which skips unless scipy's
# array-API support is switched on before scipy is first imported. With it on, the check runs (and
# passes) instead of appearing as a skip in every run.
os.environ.setdefault("SCIPY_ARRAY_API", "1")
