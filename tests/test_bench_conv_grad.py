"""scripts/bench_conv_grad.py --compare-torch: ours and PyTorch's parts of one convolution compute
the same forward, input gradient and weight gradient from the same operands (so that their times
compare), on the paths `models.layers` picks (XLA's own, the per-phase and one-matmul input
gradients) and an even kernel with one-sided padding."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from tests import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))


def _nhwc(t):
  return t.permute(0, 2, 3, 1).cpu().numpy()


@pytest.mark.parametrize("x_shape, kernel_shape, strides, path", [
    ((2, 12, 10, 8), (3, 3, 8, 16), (1, 1), "xla"),
    ((2, 20, 20, 8), (3, 3, 8, 16), (2, 2), "phase"),
    ((2, 6, 6, 256), (3, 3, 256, 32), (1, 1), "gemm"),
    ((2, 9, 9, 4), (2, 2, 4, 8), (1, 1), "xla"),
])
def test_parts_compute_the_same_as_pytorchs(x_shape, kernel_shape, strides, path):
  import bench_conv_grad
  from emogen_jax.models import layers

  assert layers._input_grad_kind(x_shape, kernel_shape, strides) == path
  ours, theirs = bench_conv_grad.conv_parts(x_shape, kernel_shape, strides)
  (top, bottom), (left, right) = bench_conv_grad._same_padding(kernel_shape)
  h, w = x_shape[1:3]
  got = {"forward": _nhwc(theirs["forward"]()),
         # PyTorch's input gradient is of the padded input: the padding's rows and columns cut.
         "input gradient": _nhwc(theirs["input gradient"]())[:, top:top + h, left:left + w],
         "weight gradient": theirs["weight gradient"]().permute(2, 3, 1, 0).cpu().numpy()}
  for part in bench_conv_grad.PARTS:
    want = np.asarray(ours[part]())
    assert got[part].shape == want.shape, part
    err = np.max(np.abs(got[part] - want)) / np.max(np.abs(want))
    assert err < 1e-5, (part, err)


def test_compare_mode_leaves_the_gradient_rules_own_convolutions_to_their_layer():
  """The per-phase input gradients run stride-1 convolutions of their own inside the backward
  pass; --compare-torch times them as part of their layer's input gradient, not as layers."""
  import bench_conv_grad

  every = bench_conv_grad.collect_convs("syncnet", "smoke", 8, every=True)
  model = bench_conv_grad.collect_convs("syncnet", "smoke", 8, every=True, model_only=True)
  internal = {key: n - model.get(key, 0) for key, n in every.items() if n > model.get(key, 0)}
  assert internal, "no convolution of a gradient rule was seen: the filter would pass anything"
  assert set(model) <= set(every)
  # The phases' convolutions are stride 1; the model's strided layers all stay.
  assert all(strides == (1, 1) for (_, _, strides) in internal), internal
  assert any(strides != (1, 1) for (_, _, strides) in model)


def test_too_few_repeats_is_a_one_line_usage_error(capsys):
  import bench_conv_grad

  with pytest.raises(SystemExit) as e:
    bench_conv_grad.main(["--compare-torch", "--repeats", "0"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert "--repeats 0: give at least 1" in err and "Traceback" not in err
