"""The domain classifier: a small CNN trained on a dataset's own training split, whose feature spaces stand in for
InceptionV3's on datasets far from ImageNet (e.g. 28x28 grayscale Fashion-MNIST).

Two feature spaces come out of one forward pass:

- `features`: the last stage's global average pool (64-d by default), the space of FID and of the class logits.
- `precision_recall_features`: every stage's global average pool, each scaled to unit length, concatenated
  (16 + 32 + 64 = 112-d by default). Precision and recall are measured here, not in `features`: off-manifold inputs
  (uniform noise, shuffled pixels) excite the trained last stage only weakly, so their `features` shrink towards the
  origin (mean norm 7.7 for noise against 14.7 for real images with the bundled Fashion-MNIST classifier), inside
  the real cloud, where the k-NN balls of ambiguous real images are wide: noise got precision 1.000 there. Unit-length
  stages remove that shrinkage, and the early stages see texture statistics the last one is trained to ignore; noise
  and shuffled pixels then score far below real images (see docs/evaluation.md).
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_domain_classifier import DomainClassifierConfig

logger = logging.get_logger(__name__)


@dataclass
class DomainClassifierOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor`, *optional*): cross-entropy, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_classes)`): class logits.
        features (`torch.FloatTensor` of shape `(batch_size, hidden_channels[-1])`): last-stage pooled features
            (the FID space).
        precision_recall_features (`torch.FloatTensor` of shape `(batch_size, sum(hidden_channels))`): every
            stage's pooled features at unit length, concatenated (the precision/recall space).
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    features: Optional[torch.FloatTensor] = None
    precision_recall_features: Optional[torch.FloatTensor] = None


def _stage_layers(in_channels: int, out_channels: int):
    """One stage: two 3x3 conv + BatchNorm + ReLU, then a 2x2 max-pool (7 layers)."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]


class DomainClassifierPreTrainedModel(PreTrainedModel):
    config_class = DomainClassifierConfig
    base_model_prefix = "domain_classifier"
    main_input_name = "pixel_values"

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=0.01)
            init.zeros_(module.bias)


class DomainClassifier(DomainClassifierPreTrainedModel):
    r"""
    A small CNN classifier used as a feature extractor for datasets far from ImageNet: FID in its pooled-feature
    space, precision/recall in its multi-stage space, and the fraction of samples classified as the class they were
    generated for. Train one with `var_hf.training.train_domain_classifier.train_domain_classifier`; it saves with
    `save_pretrained` (safetensors + `config.json`).

    Input: uint8 images `(B, 3, H, W)` (or `(B, 1, H, W)`) of any size, as the evaluator reads PNGs.

    Example:

    ```python
    >>> import torch
    >>> from var_hf.modeling_domain_classifier import DomainClassifier, DomainClassifierConfig
    >>> model = DomainClassifier(DomainClassifierConfig(num_classes=10)).eval()
    >>> out = model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    >>> out.logits.shape, out.features.shape, out.precision_recall_features.shape
    (torch.Size([2, 10]), torch.Size([2, 64]), torch.Size([2, 112]))

    ```
    """

    name = "domain-classifier"

    def __init__(self, config: DomainClassifierConfig):
        super().__init__(config)
        # One flat Sequential (parameter names `stages.<i>.*`), so the classifiers saved before stages were named keep
        # loading strictly; `stage_ends` marks where each stage's max-pool sits.
        layers, in_channels = [], config.num_channels
        for out_channels in config.hidden_channels:
            layers += _stage_layers(in_channels, out_channels)
            in_channels = out_channels
        self.stages = nn.Sequential(*layers)
        self.stage_ends = {7 * (i + 1) - 1 for i in range(len(config.hidden_channels))}  # each max-pool
        self.classifier = nn.Linear(in_channels, config.num_classes)
        self.post_init()

    @property
    def feature_dim(self) -> int:
        return self.config.hidden_channels[-1]

    @property
    def precision_recall_dim(self) -> int:
        return sum(self.config.hidden_channels)

    def preprocess(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3 or 1, H, W) -> normalised float (B, num_channels, image_size, image_size)."""
        x = pixel_values.float() / 255.0
        if self.config.num_channels == 1 and x.shape[1] == 3:
            x = (x * x.new_tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
        elif self.config.num_channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.config.pixel_mean) / self.config.pixel_std

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, return_dict: bool = True):
        x = self.preprocess(pixel_values)
        pooled = []
        for i, layer in enumerate(self.stages):
            x = layer(x)
            if i in self.stage_ends:
                pooled.append(x.mean(dim=(2, 3)))  # (B, C_stage)
        features_BD = pooled[-1]
        logits_BK = self.classifier(features_BD)
        pr_features_BP = torch.cat([F.normalize(p, dim=1) for p in pooled], dim=1)
        loss = F.cross_entropy(logits_BK, labels) if labels is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits_BK, features_BD, pr_features_BP) if v is not None)
        return DomainClassifierOutput(
            loss=loss, logits=logits_BK, features=features_BD, precision_recall_features=pr_features_BP
        )


__all__ = ["DomainClassifier", "DomainClassifierConfig", "DomainClassifierOutput", "DomainClassifierPreTrainedModel"]
