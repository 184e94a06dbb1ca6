"""MASE - mean absolute scaled error, an offline `evaluate` metric module shipped with himtm_hf.

Load it by path (no Hub access needed)::

    import evaluate
    mase = evaluate.load("/path/to/himtm_hf/metrics/mase")
    mase.compute(
        predictions=[2.5, 0.0, 2, 8, 1.25],
        references=[3, -0.5, 2, 7, 2],
        training=[5, 0.5, 4, 6, 3, 5, 2],
    )  # {'mase': 0.18333333333333335}

Same conventions as the canonical Hub "mase" module: the MAE of the forecast divided by the
in-sample MAE of the seasonal naive forecast ``training[t - periodicity]``. With several outputs
the two MAEs are aggregated first (``multioutput``) and then divided. Inputs may be 1-D or 2-D
(``n_samples, n_outputs``; detected automatically or forced with ``config_name="multilist"``).
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@article{HYNDMAN2006679,
    title = {Another look at measures of forecast accuracy},
    journal = {International Journal of Forecasting},
    volume = {22},
    number = {4},
    pages = {679--688},
    year = {2006},
    doi = {10.1016/j.ijforecast.2006.03.001},
    author = {Rob J. Hyndman and Anne B. Koehler},
}
"""

_DESCRIPTION = """\
Mean Absolute Scaled Error (MASE): the mean absolute error of the forecast divided by the mean
absolute error of the in-sample seasonal naive forecast (one-step naive for periodicity=1).
Computed in float64 with numpy (no scikit-learn dependency).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: array-like of shape (n_samples,) or (n_samples, n_outputs). Estimated values.
    references: array-like of the same shape. Ground-truth values.
    training: array-like of shape (n_train_samples,) or (n_train_samples, n_outputs). The
        in-sample series used for the naive forecast.
    periodicity: int, default 1. Seasonal period of the naive forecast.
    sample_weight: array-like of shape (n_samples,), default None. Weights of the forecast errors.
    multioutput: "raw_values", "uniform_average" (default) or array-like of shape (n_outputs,).

Returns:
    mase: float, or a numpy array for multioutput="raw_values". Non-negative; 0 is best.

Examples:
    >>> mase = evaluate.load("himtm_hf/metrics/mase")
    >>> mase.compute(predictions=[2.5, 0.0, 2, 8, 1.25], references=[3, -0.5, 2, 7, 2],
    ...              training=[5, 0.5, 4, 6, 3, 5, 2])
    {'mase': 0.18333333333333335}
    >>> mase.compute(predictions=[[0, 2], [-1, 2], [8, -5]], references=[[0.5, 1], [-1, 1], [7, -6]],
    ...              training=[[0.5, 1], [-1, 1], [7, -6]], multioutput="raw_values")
    {'mase': array([0.10526316, 0.28571429])}
"""


def _as_2d(values, name):
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        return array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {array.shape}; flatten it first.")
    return array


def _aggregate(per_output, multioutput):
    if isinstance(multioutput, str):
        if multioutput == "raw_values":
            return per_output
        if multioutput == "uniform_average":
            return float(np.mean(per_output))
        raise ValueError(
            f"multioutput must be 'raw_values', 'uniform_average' or weights, got {multioutput!r}"
        )
    return float(np.average(per_output, weights=np.asarray(multioutput, dtype=np.float64)))


def mean_absolute_scaled_error(
    references, predictions, training, periodicity=1, sample_weight=None, multioutput="uniform_average"
):
    """Numpy implementation with the canonical Hub module's semantics."""
    y_true, y_pred = _as_2d(references, "references"), _as_2d(predictions, "predictions")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"predictions {y_pred.shape} and references {y_true.shape} differ in shape")
    train = _as_2d(training, "training")
    if train.shape[1] != y_true.shape[1]:
        raise ValueError(f"training has {train.shape[1]} outputs, references have {y_true.shape[1]}")
    periodicity = int(periodicity)
    if periodicity < 1 or periodicity >= train.shape[0]:
        raise ValueError(
            f"periodicity must be in [1, {train.shape[0] - 1}] for this training series, got {periodicity}"
        )
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    naive = np.mean(np.abs(train[periodicity:] - train[:-periodicity]), axis=0)
    error = np.average(np.abs(y_true - y_pred), axis=0, weights=weights)
    epsilon = np.finfo(np.float64).eps
    return _aggregate(error, multioutput) / np.maximum(_aggregate(naive, multioutput), epsilon)


def _features(value_type):
    return datasets.Features({"predictions": value_type, "references": value_type})


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mase(evaluate.Metric):
    def _info(self):
        scalar = _features(datasets.Value("float64"))
        multilist = _features(datasets.Sequence(datasets.Value("float64")))
        if self.config_name == "multilist":
            features = multilist
        else:
            features = [scalar, multilist]
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            reference_urls=["https://otexts.com/fpp3/accuracy.html#scaled-errors"],
        )

    def _compute(
        self,
        predictions,
        references,
        training,
        periodicity=1,
        sample_weight=None,
        multioutput="uniform_average",
    ):
        mase = mean_absolute_scaled_error(
            references,
            predictions,
            training,
            periodicity=periodicity,
            sample_weight=sample_weight,
            multioutput=multioutput,
        )
        return {"mase": float(mase) if np.ndim(mase) == 0 else mase}
