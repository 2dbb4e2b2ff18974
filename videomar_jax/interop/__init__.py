"""Interoperability with PyTorch: the VideoMAR authors' checkpoint layout, MAR's diffusion
head, `.safetensors`/`.pt` import and export, and layer-by-layer verification against a
PyTorch reference of the same network (`torch_reference`, imported only when torch is).
"""

from videomar_jax.interop.layout import LayoutError, flax_to_torch, torch_to_flax
from videomar_jax.interop.torch_checkpoint import (CheckpointFileError, export_params,
                                                   init_params_loader, load_mar_head,
                                                   load_params, read_state_dict)
