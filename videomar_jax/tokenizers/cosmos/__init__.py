"""Flax port of NVIDIA's Cosmos continuous causal video tokenizer (``AutoencoderKLCosmos``).

``CosmosConfig`` holds the hyper-parameters (``VARIANTS`` / ``get_variant`` for the
released CV4x8x8, CV8x8x8, CV8x16x16 and small ``-narrow`` ones), ``CosmosAutoencoder``
the network; ``videomar_jax.tokenizers.cosmos.convert`` reads PyTorch weights into it.
"""

from videomar_jax.tokenizers.cosmos.config import VARIANTS, CosmosConfig, Stage, get_variant
from videomar_jax.tokenizers.cosmos.haar import haar_dwt3d, haar_idwt3d, patch3d, unpatch3d
from videomar_jax.tokenizers.cosmos.model import (CosmosAutoencoder, CosmosDecoder, CosmosEncoder,
                                                  abstract_params, random_params)

__all__ = [
    "VARIANTS",
    "CosmosAutoencoder",
    "CosmosConfig",
    "CosmosDecoder",
    "CosmosEncoder",
    "Stage",
    "abstract_params",
    "get_variant",
    "haar_dwt3d",
    "haar_idwt3d",
    "patch3d",
    "random_params",
    "unpatch3d",
]
