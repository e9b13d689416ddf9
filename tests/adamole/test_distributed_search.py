"""GridSearchCV over a tiny AdaMoLEClassifier under joblib's dask backend on a LocalCluster
(issue 12, part 2): the same search results as the default backend."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, StratifiedKFold

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")


def test_gridsearch_adamole_dask_equals_default(clf_bert_dir, sentiment_data, dask_client):
    from sparsekit.adamole import AdaMoLEClassifier

    X, y, Xt, _ = sentiment_data
    est = AdaMoLEClassifier(
        base_model=clf_bert_dir,
        num_experts=2,
        batch_size=16,
        num_epochs=1,
        max_length=16,
        device="cpu",
        random_state=0,
        verbose=0,
    )
    grid = {"learning_rate": [1e-3, 5e-3]}
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    local = GridSearchCV(est, grid, cv=cv, n_jobs=1, scoring="neg_log_loss").fit(X, y)
    with joblib.parallel_backend("dask"):
        remote = GridSearchCV(est, grid, cv=cv, n_jobs=-1, scoring="neg_log_loss").fit(X, y)
    assert remote.best_params_ == local.best_params_
    for key in ("split0_test_score", "split1_test_score", "mean_test_score"):
        # float32 forward passes in another process: equal to float32 rounding
        np.testing.assert_allclose(remote.cv_results_[key], local.cv_results_[key], rtol=1e-5)
    np.testing.assert_allclose(remote.predict_proba(Xt), local.predict_proba(Xt), atol=1e-5)
