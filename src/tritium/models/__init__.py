"""Model families, configs and checkpoint loading.

``load_model(path=None, device=..., dtype=...) -> (model, tokenizer, config)`` is the entry
point; ``registry`` maps architecture names to model classes.
"""

from tritium.models.registry import build_model, get_model_class, load_model

__all__ = ["build_model", "get_model_class", "load_model"]
