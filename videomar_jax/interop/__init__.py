"""Interoperability with PyTorch: the VideoMAR authors' checkpoint layout, MAR's diffusion
head, `.safetensors`/`.pt` import and export, and layer-by-layer verification against a
PyTorch reference of the same network (`torch_reference`, imported only when torch is).
"""

from videomar_jax.interop.checkpoints import (CheckpointFileError, export_params, load_mar_head,
                                              load_params, read_state_dict)
from videomar_jax.interop.layout import LayoutError, flax_to_torch, torch_to_flax
