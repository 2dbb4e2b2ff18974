"""Peak resident memory of loading a PyTorch-layout checkpoint into VideoMAR params.

  python launch/measure_load_rss.py --preset=base --dir=/tmp/rss

Writes a random `<preset>` checkpoint as .safetensors once (in a child process), then loads
it with `interop.torch_checkpoint.load_params` in a fresh child process and prints the file size,
the child's resident memory before loading (imports done) and its peak (ru_maxrss) after,
as JSON. Linux only (ru_maxrss in KiB).
"""

import argparse
import json
import os
import subprocess
import sys

_WRITE = """
import jax, sys
sys.path.insert(0, {repo!r})
from configs.videomar import get_config
from videomar_jax.interop.torch_checkpoint import export_params
from videomar_jax.models.videomar import VideoMAR
config = get_config({preset!r})
params = jax.jit(VideoMAR(config).init)(jax.random.PRNGKey(0))
export_params(params, config, {path!r})
"""

_LOAD = """
import json, resource, sys
sys.path.insert(0, {repo!r})
import jax, numpy as np
from configs.videomar import get_config
from videomar_jax.interop import torch_checkpoint as checkpoints
def rss_mib():
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
config = get_config({preset!r})
before = rss_mib()
params = checkpoints.load_params({path!r}, config)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
count = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
print(json.dumps({{"rss_before_mib": before, "peak_rss_mib": peak,
                  "params_mib": count * 4 / 2**20}}))
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="base")
  parser.add_argument("--dir", default="/tmp/videomar_rss")
  args = parser.parse_args()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  os.makedirs(args.dir, exist_ok=True)
  path = os.path.join(args.dir, f"{args.preset}.safetensors")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  if not os.path.exists(path):
    subprocess.run([sys.executable, "-c", _WRITE.format(repo=repo, preset=args.preset,
                                                        path=path)], check=True, env=env)
  out = subprocess.run([sys.executable, "-c", _LOAD.format(repo=repo, preset=args.preset,
                                                           path=path)],
                       check=True, env=env, capture_output=True, text=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  result["file_mib"] = os.path.getsize(path) / 2**20
  result["peak_minus_before_mib"] = result["peak_rss_mib"] - result["rss_before_mib"]
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
