"""The OpenVLA-OFT-family model: config, modules, checkpoints, FLOPs. Imports without ROS."""
from .configuration_vla import BackboneConfig, ConfigError, NormStats, VisionConfig, VLAConfig  # noqa: F401
from .modeling_vla import ForwardTrace, TokenLayout, VLAModel  # noqa: F401
