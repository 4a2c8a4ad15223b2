"""XLA:CPU's convolution path (emogen_jax.xla_cpu): an entry point's process compiles its
convolutions outside the YNNPACK fusions, with the same numbers; the user's own XLA_FLAGS and
unmeasured jaxlib releases are left alone. Real subprocesses and real compiles."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emogen_jax import xla_cpu
from tests import subprocess_env

# An entry point's first call, then one convolution compiled and compared with NumPy's (32
# channels: XLA gives narrower ones to neither library), relative error.
_PROBE = """
from emogen_jax import allocator
allocator.use_fast_allocator()
import jax, numpy as np
from jax import lax
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 12, 12, 32)).astype(np.float32)
w = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
conv = jax.jit(lambda x, w: lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
text = conv.lower(x, w).compile().as_text()
entry = text.split("ENTRY")[1]
xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
ref = sum(np.einsum("nhwc,co->nhwo", xp[:, i:i + 12, j:j + 12], w[i, j])
          for i in range(3) for j in range(3))
err = float(np.max(np.abs(np.asarray(conv(x, w)) - ref)) / np.max(np.abs(ref)))
print(int(" convolution(" in entry), int("__ynn_fusion" in entry), err, sep="|")
"""


def _probe(**env: str) -> tuple[int, int, float]:
  out = subprocess.run([sys.executable, "-c", _PROBE], env=subprocess_env(**env),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  plain, ynn, err = out.stdout.strip().splitlines()[-1].split("|")
  return int(plain), int(ynn), float(err)


@pytest.mark.skipif(xla_cpu._jaxlib_release() not in xla_cpu.MEASURED_JAXLIB,
                    reason="the flag is only set on the jaxlib releases it was measured on")
def test_entry_point_compiles_convolutions_outside_ynnpack_with_the_same_numbers():
  plain, ynn, err = _probe()
  assert (plain, ynn) == (1, 0)
  assert err < 1e-5
  # The user's own choice stands: XLA's default fusions (the convolution inside YNNPACK's).
  plain, ynn, err_default = _probe(XLA_FLAGS=f"{xla_cpu.FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_"
                                             "CONVOLUTION")
  assert (plain, ynn) == (0, 1)
  assert err_default < 1e-5


def test_flag_added_once_and_never_over_the_users(monkeypatch):
  monkeypatch.setattr(xla_cpu, "_jaxlib_release", lambda: xla_cpu.MEASURED_JAXLIB[0])
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert xla_cpu.use_direct_convolutions(env)
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=2 "
                              f"{xla_cpu.FLAG}={xla_cpu.VALUE}")
  assert xla_cpu.use_direct_convolutions(env)  # a second call (the re-executed process) adds none
  assert env["XLA_FLAGS"].count(xla_cpu.FLAG) == 1
  users = {"XLA_FLAGS": f"{xla_cpu.FLAG}="}
  assert xla_cpu.use_direct_convolutions(users) and users["XLA_FLAGS"] == f"{xla_cpu.FLAG}="


def test_unmeasured_jaxlib_gets_no_flag(monkeypatch):
  # XLA stops the process on a flag it does not know: other releases keep its defaults.
  monkeypatch.setattr(xla_cpu, "_jaxlib_release", lambda: "99.0")
  env: dict[str, str] = {}
  assert not xla_cpu.use_direct_convolutions(env)
  assert "XLA_FLAGS" not in env
