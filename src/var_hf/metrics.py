"""Alias of `var_hf.evaluation.metrics`, where the metric math lives (FID, Inception Score, precision/recall, class
accuracy); kept so that `from var_hf.metrics import frechet_distance` keeps working."""

from var_hf.evaluation.metrics import *  # noqa: F401,F403
from var_hf.evaluation.metrics import __all__  # noqa: F401
