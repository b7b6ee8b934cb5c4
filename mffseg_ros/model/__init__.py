"""The MFF network, its discriminator and safetensors weights (pure PyTorch).

Imports are lazy so that `mffseg_ros.model.classes` (class names, colours) loads without torch.
"""
import importlib

_EXPORTS = {
    'MFFNet': 'mffnet', 'count_parameters': 'mffnet',
    'Discriminator': 'discriminator',
    'save_weights': 'weights', 'load_weights': 'weights', 'read_metadata': 'weights',
    'WeightsMeta': 'weights', 'Preprocessing': 'weights', 'Provenance': 'weights',
    'load_encoder_weights': 'pretrained',
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
