"""scripts/bench_train.py --parts: the EmoGen iteration's parts, ours and PyTorch's, do the same
work (the same gradients from the same weights and inputs), so that their times compare."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

from tests import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))


def _built(vgg_width: float = 0.125) -> dict:
  """What bench_train.build returns, as far as the parts read it, for the smoke EmoGen stage at
  batch 2, with a small random VGG-19 so that the perceptual part is there too (no step
  compiled)."""
  import jax.numpy as jnp

  import bench_train
  from emogen_jax.models import VGG19Features
  from emogen_jax.train.state import replicate

  mod, config, setup, _, batch = bench_train.stage_inputs("emogen", "smoke", batch=2)
  setup.update(use_vgg=True, vgg_width=vgg_width,
               vgg19=VGG19Features(width=vgg_width).init(jax.random.PRNGKey(1),
                                                         jnp.zeros((1, 96, 96, 3))))
  host_state = mod.init_state(config, jax.random.PRNGKey(0), setup)
  return {"config": config, "setup": setup, "host_state": host_state, "batch": batch,
          "holder": {"state": replicate(host_state)}, "devices": jax.local_device_count(),
          "platform": jax.devices()[0].platform}


def _norm(grads) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                           for g in jax.tree_util.tree_leaves(grads))))


def test_emogen_parts_compute_the_same_gradients_as_pytorchs():
  pytest.importorskip("torch")
  import bench_train
  import torch_baseline

  ours = _built()
  generated = np.random.default_rng(1).uniform(0, 1, ours["batch"]["target"].shape)
  generated = generated.astype(np.float32)
  mine = bench_train.emogen_parts(ours, generated)
  theirs = torch_baseline.emogen_parts(bench_train.torch_nets(ours, "cpu"), ours["batch"],
                                       generated, "cpu")
  assert list(mine) == list(theirs) == ["generator", "perceptual", "sync expert",
                                        "emotion disc on generated", "emotion disc update"]
  for name in mine:
    a, b = mine[name](), theirs[name]()
    if name in ("generator", "emotion disc update"):  # weight gradients: the same total size
      want = _norm([t.detach().numpy() for t in b])
      assert want > 1e-6, name
      np.testing.assert_allclose(_norm(a), want, rtol=2e-4, err_msg=name)
    else:  # the generated frames' gradient, (B, T, 3, H, W) on PyTorch's side
      want = np.moveaxis(b[0].detach().numpy(), 2, -1)
      got = np.asarray(a)[0]
      scale = float(np.max(np.abs(want)))
      assert scale > 0, name
      np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * scale, err_msg=name)
