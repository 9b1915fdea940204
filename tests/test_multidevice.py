"""8 devices x batch 1 (mesh and pmap) update the parameters as 1 device x batch 8."""

import os
import re
import subprocess
import sys


def test_data_parallel_step_equals_single_device_step():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    script = os.path.join(os.path.dirname(__file__), "multidevice_check.py")
    out = subprocess.run(
        [sys.executable, script], env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-4000:]
    diffs = dict(re.findall(r"max_abs_diff_(\w+)=([0-9.e+-]+)", out.stdout))
    update = float(re.search(r"update_size=([0-9.e+-]+)", out.stdout).group(1))
    assert set(diffs) == {"mesh", "pmap"}, out.stdout
    assert update > 1e-4, "the steps did not change the parameters; the comparison is empty"
    for name, diff in diffs.items():
        assert float(diff) < 1e-5 + 1e-3 * update, (name, diff, update)
