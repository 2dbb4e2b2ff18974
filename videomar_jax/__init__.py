"""videomar_jax: VideoMAR in JAX/Flax."""
