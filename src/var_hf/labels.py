"""Class names <-> class ids for VAR pipelines.

ImageNet's 1000 names ship with the package (`resources/imagenet_id2label.json`, WordNet lemmas in the standard class order,
taken from timm's `imagenet_synset_to_lemma.txt`). A name matches a class when it equals the full label or one of its
comma-separated synonyms, case-insensitively ("golden retriever", "Tinca tinca").
"""

import difflib
import json
import os
from functools import lru_cache
from typing import Dict, List, Mapping, Optional, Sequence, Union

from transformers.utils import logging

logger = logging.get_logger(__name__)

IMAGENET_ID2LABEL_PATH = os.path.join(os.path.dirname(__file__), "resources", "imagenet_id2label.json")

LabelLike = Union[int, str, None]


@lru_cache(maxsize=1)
def _imagenet_id2label() -> Dict[int, str]:
    with open(IMAGENET_ID2LABEL_PATH, encoding="utf-8") as f:
        return {int(k): v for k, v in json.load(f).items()}


def imagenet_id2label() -> Dict[int, str]:
    """ImageNet-1k class names, id -> label."""
    return dict(_imagenet_id2label())


def is_default_id2label(id2label: Optional[Mapping]) -> bool:
    """True for transformers' placeholder names (`LABEL_0`, `LABEL_1`)."""
    return not id2label or all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def default_id2label(transformer_config) -> Dict[int, str]:
    """A model's class names: its config's own (when not transformers' placeholders), ImageNet's for 1000 classes,
    else the ids as strings."""
    id2label, num_classes = transformer_config.id2label, transformer_config.num_classes
    if not is_default_id2label(id2label) and len(id2label) == num_classes:
        return {int(k): str(v) for k, v in id2label.items()}
    return imagenet_id2label() if num_classes == 1000 else {i: str(i) for i in range(num_classes)}


def random_class_ids(num_classes: int, batch_size: int, generator=None, device=None) -> List[int]:
    """Class ids drawn uniformly with replacement, as the reference's `label_B=None` draws them: one
    `torch.multinomial` over the classes, from `generator` (where it lives; else on `device` from the default one)."""
    import torch

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be one torch.Generator (the one the sampling call will use) or None, "
                         f"got {type(generator).__name__}.")
    device = generator.device if generator is not None else device  # the reference's draw sits on its rng's device
    uniform_1N = torch.full((1, num_classes), 1.0 / num_classes, dtype=torch.float32, device=device)
    return torch.multinomial(uniform_1N, batch_size, replacement=True, generator=generator).reshape(-1).tolist()


class LabelMap:
    """Resolves class names and ids against an `id2label` mapping, with helpful errors."""

    def __init__(self, id2label: Mapping, num_classes: int):
        self.num_classes = num_classes
        self.id2label = {int(k): str(v) for k, v in id2label.items()}
        self._name_to_ids: Dict[str, List[int]] = {}
        for idx, label in self.id2label.items():
            names = {label.strip().lower()} | {s.strip().lower() for s in label.split(",") if s.strip()}
            for name in names:
                self._name_to_ids.setdefault(name, []).append(idx)

    def resolve(self, label: LabelLike) -> int:
        """One label -> class id; `None` is the null class (unconditional)."""
        if label is None:
            return self.num_classes
        if isinstance(label, bool):
            raise ValueError(f"Class label {label!r} is a bool; pass an int id or a class name.")
        if isinstance(label, int) or (hasattr(label, "__index__") and not isinstance(label, str)):
            idx = int(label)
            if not 0 <= idx < self.num_classes:
                raise ValueError(
                    f"Class id {idx} is out of range: this model has classes 0..{self.num_classes - 1} "
                    f"(use None for unconditional generation)."
                )
            return idx
        if isinstance(label, str):
            ids = self._name_to_ids.get(label.strip().lower())
            if ids is None:
                close = difflib.get_close_matches(label.strip().lower(), list(self._name_to_ids), n=5, cutoff=0.5)
                hint = f" Closest matches: {close}." if close else " See `pipe.labels` for the known names."
                raise ValueError(f"Unknown class name {label!r}.{hint}")
            if len(set(ids)) > 1:
                options = ", ".join(f"{i} ({self.id2label[i]})" for i in sorted(set(ids)))
                raise ValueError(f"Class name {label!r} is ambiguous: it names classes {options}; pass the id.")
            return ids[0]
        raise ValueError(f"Class labels must be ints, names or None, got {type(label).__name__}: {label!r}.")

    def resolve_many(self, labels: Union[LabelLike, Sequence[LabelLike]]) -> List[int]:
        """Labels -> class ids. Also takes a 0-d or 1-d integer tensor or array, like the reference's `label_B`."""
        if hasattr(labels, "ndim") and hasattr(labels, "tolist"):  # torch.Tensor, np.ndarray
            if labels.ndim > 1:
                raise ValueError(
                    f"Class labels given as a tensor or array must be 0-d or 1-d (one id per image), got shape "
                    f"{tuple(labels.shape)}; flatten it or pass a list."
                )
            labels = labels.tolist()
        if labels is None or isinstance(labels, (int, str)) or hasattr(labels, "__index__"):
            labels = [labels]
        return [self.resolve(label) for label in labels]

    @property
    def names(self) -> Dict[str, int]:
        """Every accepted name (labels and their synonyms, lower-case) -> id, ambiguous names left out."""
        return {name: ids[0] for name, ids in sorted(self._name_to_ids.items()) if len(set(ids)) == 1}


__all__ = ["LabelMap", "default_id2label", "random_class_ids", "imagenet_id2label", "is_default_id2label", "IMAGENET_ID2LABEL_PATH"]
