"""himtm-hf: HiMTM (arXiv 2401.05012) as Hugging Face models.

Importing the package registers the model with the `transformers` Auto classes, so that
`AutoConfig`, `AutoModel`, `AutoModelForPreTraining` and `AutoModelForTimeSeriesPrediction` resolve `"himtm"`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForTimeSeriesPrediction,
)

from .configuration_himtm import HiMTMConfig
from .modeling_himtm import (
    HiMTMForPrediction,
    HiMTMForPredictionOutput,
    HiMTMForPretraining,
    HiMTMForPretrainingOutput,
    HiMTMModel,
    HiMTMModelOutput,
    HiMTMPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register("himtm", HiMTMConfig, exist_ok=True)
AutoModel.register(HiMTMConfig, HiMTMModel, exist_ok=True)
AutoModelForPreTraining.register(HiMTMConfig, HiMTMForPretraining, exist_ok=True)
AutoModelForTimeSeriesPrediction.register(HiMTMConfig, HiMTMForPrediction, exist_ok=True)

# `save_pretrained` then writes `auto_map` and copies the two model files for `trust_remote_code` loading.
HiMTMConfig.register_for_auto_class()
HiMTMModel.register_for_auto_class("AutoModel")
HiMTMForPretraining.register_for_auto_class("AutoModelForPreTraining")
HiMTMForPrediction.register_for_auto_class("AutoModelForTimeSeriesPrediction")

__all__ = [
    "HiMTMConfig",
    "HiMTMForPrediction",
    "HiMTMForPredictionOutput",
    "HiMTMForPretraining",
    "HiMTMForPretrainingOutput",
    "HiMTMModel",
    "HiMTMModelOutput",
    "HiMTMPreTrainedModel",
    "__version__",
]
