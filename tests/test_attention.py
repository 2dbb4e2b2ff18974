"""Attention's fast path (jax.nn.dot_product_attention) against the reference einsums:
values and gradients, for every mask the model uses (dense frame-causal, sparse frame
blocks, query chunks, KV cache + own frame), and the implementation choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videomar_jax.models import sequence
from videomar_jax.models.attention import dot_product_attention, resolve_implementation

B, H, HD, N = 2, 3, 8, 4  # batch, heads, head_dim, tokens per frame
# fp32: both paths compute float32 logits and softmax; they differ only in summation order.
RTOL, ATOL = 1e-5, 1e-6


def _qkv(sq, sk, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (B, sq, H, HD)), jax.random.normal(keys[1], (B, sk, H, HD)),
          jax.random.normal(keys[2], (B, sk, H, HD)))


def _all_frames_mask():
  # Clean frames 0..2 (context stream), then masked copies of frames 1..3 (target stream).
  frames, is_target = [0, 1, 2, 1, 2, 3], [False] * 3 + [True] * 3
  return sequence.frame_block_mask(frames, is_target, N, min_saving=0.0)


def _masks():
  causal = sequence.frame_causal_mask(4, N)[None, None]
  return {"frame_causal": (causal, 4 * N, 4 * N, 0),
          "frame_causal_chunked": (causal, 4 * N, 4 * N, 3),
          "frame_blocks": (_all_frames_mask(), 6 * N, 6 * N, 0),
          "frame_blocks_chunked": (_all_frames_mask(), 6 * N, 6 * N, 5),
          # A cached decoding step: 3 cache frames (the last unwritten), then the frame itself.
          "kv_cache_step": (jnp.concatenate([jnp.repeat(jnp.arange(3) < 2, N)[None].repeat(N, 0),
                                             jnp.ones((N, N), bool)], 1)[None, None],
                            N, 4 * N, 0),
          "batched_padding": (jnp.arange(2 * N)[None, None, None, :]
                              < jnp.array([N, 2 * N])[:, None, None, None], 2 * N, 2 * N, 0),
          "none": (None, 3 * N, 3 * N, 0)}


@pytest.mark.parametrize("name", sorted(_masks()))
def test_fast_path_equals_reference_with_gradients(name):
  mask, sq, sk, chunk = _masks()[name]
  q, k, v = _qkv(sq, sk)
  weights = jax.random.normal(jax.random.key(9), (B, sq, H, HD))

  def loss(impl, q, k, v):
    return jnp.sum(dot_product_attention(q, k, v, mask, chunk, impl) * weights)

  out = {impl: dot_product_attention(q, k, v, mask, chunk, impl) for impl in ("xla", "reference")}
  np.testing.assert_allclose(out["xla"], out["reference"], rtol=RTOL, atol=ATOL)
  grads = {impl: jax.grad(loss, argnums=(1, 2, 3))(impl, q, k, v) for impl in out}
  for fast, ref in zip(grads["xla"], grads["reference"]):
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-5)


def test_fast_path_in_bfloat16_stays_close_to_the_float32_reference():
  mask = sequence.frame_causal_mask(3, N)[None, None]
  q, k, v = _qkv(3 * N, 3 * N, seed=1)
  ref = dot_product_attention(q, k, v, mask, implementation="reference")
  bf16 = dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask,
                               implementation="xla")
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(bf16.astype(jnp.float32), ref, atol=5e-2)


def test_masked_keys_weigh_exactly_zero():
  # A key a query may not see changes nothing, whatever its value (here: huge).
  q, k, v = _qkv(N, 2 * N, seed=2)
  mask = (jnp.arange(2 * N) < N)[None, None, None, :]
  k2, v2 = k.at[:, N:].set(1e4), v.at[:, N:].set(1e4)
  for impl in ("xla", "reference"):
    np.testing.assert_array_equal(dot_product_attention(q, k, v, mask, implementation=impl),
                                  dot_product_attention(q, k2, v2, mask, implementation=impl))


def test_implementation_choice():
  # cuDNN's flash attention takes only 16-bit inputs: float32 stays on XLA everywhere.
  assert resolve_implementation("auto", jnp.float32, 64) == "xla"
  expected_bf16 = "cudnn" if jax.default_backend() == "gpu" else "xla"
  assert resolve_implementation("auto", jnp.bfloat16, 64) == expected_bf16
  assert resolve_implementation("auto", jnp.bfloat16, 96 + 4) == "xla"  # not a multiple of 8
  assert resolve_implementation("reference", jnp.float32, 64) == "reference"
  with pytest.raises(ValueError, match="not in"):
    resolve_implementation("flash", jnp.float32, 64)


def test_cudnn_is_given_masks_of_whole_query_and_key_lengths(monkeypatch):
  # cuDNN takes a mask only as a bias of the whole [Sq, Sk] (it refused the text context's
  # key-only [B, 1, 1, Sk] mask on a GPU: "Bias must have same seq length as QKV"). No
  # cuDNN here, so the call is intercepted: its mask, and XLA's result on the same inputs.
  seen = []
  xla = jax.nn.dot_product_attention

  def fake_cudnn(q, k, v, mask=None, implementation=None):
    seen.append(mask.shape)
    return xla(q, k, v, mask=mask, implementation="xla")

  monkeypatch.setattr(jax.nn, "dot_product_attention", fake_cudnn)
  q, k, v = _qkv(5, 7)
  key_only = jnp.arange(7)[None, None, None, :] < jnp.array([4, 7])[:, None, None, None]
  out = dot_product_attention(q, k, v, key_only, implementation="cudnn")
  assert seen == [(B, 1, 5, 7)]
  reference = dot_product_attention(q, k, v, key_only, implementation="reference")
  np.testing.assert_allclose(out, reference, rtol=RTOL, atol=ATOL)
