"""MSE - mean squared error, an offline `evaluate` metric module shipped with himtm_hf.

Load it by path (no Hub access needed)::

    import evaluate
    mse = evaluate.load("/path/to/himtm_hf/metrics/mse")
    mse.compute(predictions=[2.5, 0.0, 2, 8], references=[3, -0.5, 2, 7])  # {'mse': 0.375}

Inputs may be 1-D (``n_samples``) or 2-D (``n_samples, n_outputs``); the 2-D form is detected
automatically (or forced with ``config_name="multilist"``). Higher-dimensional forecasts
(windows, horizon, channels) should be flattened first, e.g. ``x.reshape(-1)``.
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@book{hyndman2021fpp3,
  title = {Forecasting: principles and practice},
  author = {Hyndman, Rob J. and Athanasopoulos, George},
  edition = {3},
  publisher = {OTexts},
  year = {2021},
  url = {https://otexts.com/fpp3/}
}
"""

_DESCRIPTION = """\
Mean Squared Error (MSE): the average of the squared differences between predictions and
references. Computed in float64 with numpy (no scikit-learn dependency).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: array-like of shape (n_samples,) or (n_samples, n_outputs). Estimated values.
    references: array-like of the same shape. Ground-truth values.
    sample_weight: array-like of shape (n_samples,), default None. Sample weights.
    multioutput: "raw_values", "uniform_average" (default) or array-like of shape (n_outputs,)
        with weights used to average the per-output errors.
    squared: bool, default True. If False the root mean squared error is returned (per output,
        then aggregated).

Returns:
    mse: float, or a numpy array for multioutput="raw_values".

Examples:
    >>> mse = evaluate.load("himtm_hf/metrics/mse")
    >>> mse.compute(predictions=[2.5, 0.0, 2, 8], references=[3, -0.5, 2, 7])
    {'mse': 0.375}
    >>> mse.compute(predictions=[[0.5, 1], [-1, 1], [7, -6]], references=[[0, 2], [-1, 2], [8, -5]])
    {'mse': 0.7083333333333334}
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


def mean_squared_error(
    references, predictions, sample_weight=None, multioutput="uniform_average", squared=True
):
    """Numpy implementation with scikit-learn's semantics."""
    y_true, y_pred = _as_2d(references, "references"), _as_2d(predictions, "predictions")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"predictions {y_pred.shape} and references {y_true.shape} differ in shape")
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    per_output = np.average((y_true - y_pred) ** 2, axis=0, weights=weights)
    if not squared:
        per_output = np.sqrt(per_output)
    return _aggregate(per_output, multioutput)


def _features(value_type):
    return datasets.Features({"predictions": value_type, "references": value_type})


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mse(evaluate.Metric):
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
            reference_urls=["https://en.wikipedia.org/wiki/Mean_squared_error"],
        )

    def _compute(
        self, predictions, references, sample_weight=None, multioutput="uniform_average", squared=True
    ):
        return {
            "mse": mean_squared_error(
                references, predictions, sample_weight=sample_weight, multioutput=multioutput, squared=squared
            )
        }
