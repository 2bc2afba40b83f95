"""The baselines' models: each built, fitted on training rows with early stopping on validation rows, and
returned as a function from features to predicted class indices. Test rows never come here.

Each boosted model runs on one thread (HistGradientBoosting through the stage's OpenMP limit) with a fixed seed,
so a fit gives the same trees on every run, whatever the machine's core count, and whatever else runs beside it:
the stage fits several peers side by side, one thread each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.params import BaselinesParams, LightGBMParams, XGBoostParams
from pipeline.subgenres import fit_subgenres
from spotify_genre.errors import DataError
from spotify_genre.songs.schema import GENRES


@dataclass(frozen=True)
class Fitted:
    predict: Callable[[np.ndarray], np.ndarray]  # features -> class index (int64) of each row
    iterations: int | None  # boosting rounds kept after early stopping; None for a model without rounds


class Cancelled(Exception):
    """A boosted fit given up between rounds because its `cancelled` check said so."""


def fit_peer(name: str, params: BaselinesParams, features: np.ndarray, labels: np.ndarray,
             val_features: np.ndarray, val_labels: np.ndarray, subgenres: np.ndarray | None = None,
             val_subgenres: np.ndarray | None = None, cancelled: Callable[[], bool] = lambda: False) -> Fitted:
    """Baseline `name` fitted on (features, labels); the boosted trees stop early on the validation rows. A
    boosted tree whose `target` is subgenre fits the rows' `subgenres` instead (pipeline/subgenres.py),
    stops early on the validation rows' (`val_subgenres`), and predicts the genre whose subgenres' summed
    probability is highest. A boosted fit raises Cancelled at the first round after `cancelled()` is true."""
    if name in ("lightgbm", "xgboost"):
        settings = getattr(params, name)
        boost = _lightgbm if name == "lightgbm" else _xgboost
        if settings.target == "genre":
            probabilities, rounds = boost(settings, params.seed, features, labels, val_features, val_labels,
                                          len(GENRES), cancelled)
            return Fitted(lambda rows: _argmax(probabilities(rows)), rounds)
        if subgenres is None or val_subgenres is None:
            raise DataError(f"baselines.{name}.target: subgenre needs the processed splits' subgenre column; "
                            "run `dvc repro preprocess` again")
        vocabulary = fit_subgenres(labels, subgenres)
        probabilities, rounds = boost(settings, params.seed, features, vocabulary.codes(labels, subgenres),
                                      val_features, vocabulary.codes(val_labels, val_subgenres),
                                      len(vocabulary.names), cancelled)
        return Fitted(lambda rows: _argmax(vocabulary.genre_probabilities(probabilities(rows))), rounds)
    model = _scikit_learn(name, params)
    model.fit(features, labels)
    rounds = getattr(model, "n_iter_", None)  # HistGradientBoosting's own early stopping, on 10% of `features`
    return Fitted(lambda rows: model.predict(rows).astype(np.int64), None if rounds is None else int(rounds))


def _scikit_learn(name: str, params: BaselinesParams):
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    if name == "majority":
        return DummyClassifier(strategy="most_frequent")
    if name == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(random_state=params.seed)
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=params.rf_trees, n_jobs=params.threads, random_state=params.seed)
    raise ValueError(f"unknown baseline {name!r}")


def _argmax(probabilities: np.ndarray) -> np.ndarray:
    return probabilities.argmax(axis=1)


Probabilities = Callable[[np.ndarray], np.ndarray]  # features -> (rows, classes) probabilities


def _lightgbm(params: LightGBMParams, seed: int, features: np.ndarray, labels: np.ndarray,
              val_features: np.ndarray, val_labels: np.ndarray, classes: int,
              cancelled: Callable[[], bool]) -> tuple[Probabilities, int]:
    """The booster's probabilities and the rounds it kept, stopped early on the validation rows' log loss."""
    import lightgbm

    settings = {
        "objective": "multiclass", "num_class": classes, "metric": "multi_logloss",
        "learning_rate": params.learning_rate, "num_leaves": params.num_leaves,
        "min_data_in_leaf": params.min_data_in_leaf, "feature_fraction": params.feature_fraction,
        "bagging_fraction": params.bagging_fraction, "bagging_freq": 1, "lambda_l2": params.lambda_l2,
        "max_bin": params.max_bin,
        "seed": seed, "num_threads": 1, "deterministic": True, "force_row_wise": True, "verbosity": -1,
    }
    train = lightgbm.Dataset(features, labels, params=settings)
    val = lightgbm.Dataset(val_features, val_labels, reference=train)  # binned by the training rows' bounds
    stop = lightgbm.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False)

    def check(_env) -> None:
        if cancelled():
            raise Cancelled

    booster = lightgbm.train(settings, train, num_boost_round=params.max_rounds, valid_sets=[val],
                             valid_names=["val"], callbacks=[stop, check])
    rounds = booster.best_iteration
    return (lambda rows: booster.predict(rows, num_iteration=rounds)), rounds


def _xgboost(params: XGBoostParams, seed: int, features: np.ndarray, labels: np.ndarray,
             val_features: np.ndarray, val_labels: np.ndarray, classes: int,
             cancelled: Callable[[], bool]) -> tuple[Probabilities, int]:
    """As _lightgbm, with XGBoost."""
    import xgboost

    class Check(xgboost.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            if cancelled():
                raise Cancelled
            return False

    settings = {
        "objective": "multi:softprob", "num_class": classes, "eval_metric": "mlogloss",
        "learning_rate": params.learning_rate, "max_depth": params.max_depth,
        "min_child_weight": params.min_child_weight, "subsample": params.subsample,
        "colsample_bytree": params.colsample_bytree, "reg_lambda": params.reg_lambda,
        "max_bin": params.max_bin,
        "tree_method": "hist", "seed": seed, "nthread": 1, "verbosity": 0,
    }
    train = xgboost.DMatrix(features, labels, nthread=1)
    val = xgboost.DMatrix(val_features, val_labels, nthread=1)
    booster = xgboost.train(settings, train, num_boost_round=params.max_rounds, evals=[(val, "val")],
                            early_stopping_rounds=params.early_stopping_rounds, verbose_eval=False,
                            callbacks=[Check()])
    rounds = booster.best_iteration + 1
    return (lambda rows: booster.predict(xgboost.DMatrix(rows, nthread=1), iteration_range=(0, rounds))), rounds
