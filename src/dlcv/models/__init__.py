"""A small registry of named model builders: `create_model(name, num_classes=..., weights=..., **options)`.
Importing the package registers every builder (classifiers, segmenters import only the registry)."""
from dlcv.models.registry import ModelSpec, create_model, list_models, model_from_checkpoint, model_spec
from dlcv.models import classifiers, segmenters  # noqa: E402,F401  (register on import)

__all__ = ["ModelSpec", "create_model", "list_models", "model_from_checkpoint", "model_spec"]
