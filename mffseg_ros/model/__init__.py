"""The MFF network, its discriminator and safetensors weights (pure PyTorch)."""
from mffseg_ros.model.discriminator import Discriminator
from mffseg_ros.model.mffnet import MFFNet, build_mffnet, count_parameters
from mffseg_ros.model.weights import load_weights, read_metadata, save_weights

__all__ = ['MFFNet', 'build_mffnet', 'count_parameters', 'Discriminator',
           'save_weights', 'load_weights', 'read_metadata']
