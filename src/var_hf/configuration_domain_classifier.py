"""Configuration of the domain classifier, the small CNN whose feature space `var-hf evaluate` uses for small datasets."""

from typing import Sequence

from transformers import PretrainedConfig


class DomainClassifierConfig(PretrainedConfig):
    r"""
    Configuration of [`DomainClassifier`], the small CNN that gives FID, precision/recall and class accuracy in a
    dataset's own feature space.

    Args:
        num_classes (`int`, *optional*, defaults to 10):
            Number of classes of the dataset.
        num_channels (`int`, *optional*, defaults to 1):
            Channels the network sees: 1 converts RGB inputs to luma (ITU-R 601, as PIL's `"L"`), 3 keeps RGB.
        image_size (`int`, *optional*, defaults to 28):
            Side the inputs are resized to (antialiased bilinear) before the network.
        hidden_channels (`Sequence[int]`, *optional*, defaults to `(16, 32, 64)`):
            Width of each conv stage (two 3x3 convs, BatchNorm, ReLU, then 2x2 max-pool); the last is the feature size.
        pixel_mean (`float`, *optional*, defaults to 0.5), pixel_std (`float`, *optional*, defaults to 0.25):
            Normalisation of inputs in [0, 1]; `train_domain_classifier` sets them from the training images.

    Example:

    ```python
    >>> from var_hf.configuration_domain_classifier import DomainClassifierConfig
    >>> DomainClassifierConfig(num_classes=4, hidden_channels=(8, 16)).hidden_channels
    [8, 16]

    ```
    """

    model_type = "var_domain_classifier"

    def __init__(
        self,
        num_classes: int = 10,
        num_channels: int = 1,
        image_size: int = 28,
        hidden_channels: Sequence[int] = (16, 32, 64),
        pixel_mean: float = 0.5,
        pixel_std: float = 0.25,
        **kwargs,
    ):
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
        hidden_channels = list(hidden_channels)
        if not hidden_channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in hidden_channels):
            raise ValueError(f"hidden_channels must be a non-empty list of positive integers, got {hidden_channels!r}.")
        if not pixel_std > 0:
            raise ValueError(f"pixel_std must be positive, got {pixel_std!r}.")
        self.num_classes = num_classes
        self.num_channels = num_channels
        self.image_size = image_size
        self.hidden_channels = hidden_channels
        self.pixel_mean = pixel_mean
        self.pixel_std = pixel_std
        super().__init__(**kwargs)


__all__ = ["DomainClassifierConfig"]
