"""Re-encode a directory of videos at a fixed frame rate (25 fps, as EmoGen's preprocessing expects).

    python -m data_tools.convert_fps --src CREMA-D/VideoFlash --dst data/crema_25fps [--fps 25] [--jobs N]

Every video under --src (recursively) becomes <dst>/<same relative path>.mp4: H.264 yuv420p at the
target rate (frames dropped/duplicated by ffmpeg's fps filter, so the duration is kept) with the audio
re-encoded as AAC. Outputs newer than their input are skipped (up to date), so an interrupted run can
be resumed. A file ffmpeg cannot convert is reported as failed, by name, and the others still convert;
the exit status is then 1 (0 when every video converted or was up to date), so a script can tell.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import sys
import time

from emogen_jax.data.media import ffmpeg_exe
from emogen_jax.data import files
from emogen_jax.errors import ArgumentParser, UserError, cli_main

VIDEO_EXTENSIONS = (".mp4", ".flv", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclasses.dataclass
class Report:
  converted: list = dataclasses.field(default_factory=list)
  skipped: list = dataclasses.field(default_factory=list)
  failed: list = dataclasses.field(default_factory=list)  # (input path, reason)

  def summary(self) -> str:
    return f"converted {len(self.converted)}, skipped {len(self.skipped)} (up to date), failed {len(self.failed)}"


def find_videos(src: str, extensions=VIDEO_EXTENSIONS) -> list[str]:
  """Video files under src (recursive, by extension), as paths relative to src, sorted."""
  found = []
  for root, dirs, files in os.walk(src):
    dirs.sort()
    for name in files:
      if name.lower().endswith(extensions) and not name.startswith("."):
        found.append(os.path.relpath(os.path.join(root, name), src))
  return sorted(found)


def output_path(rel: str, dst: str) -> str:
  return os.path.join(dst, os.path.splitext(rel)[0] + ".mp4")


def is_up_to_date(src_file: str, dst_file: str) -> bool:
  return os.path.exists(dst_file) and os.path.getmtime(dst_file) >= os.path.getmtime(src_file)


def convert_one(src_file: str, dst_file: str, fps: float = 25, threads: int = 1) -> None:
  """ffmpeg src_file -> dst_file at `fps`; raises RuntimeError with ffmpeg's last message on failure.

  Writes to a temporary name first and renames, so a killed run never leaves a partial file that
  would later look up to date.
  """
  os.makedirs(os.path.dirname(dst_file) or ".", exist_ok=True)
  with files.atomic_file(dst_file) as tmp:
    _ffmpeg_convert(src_file, tmp, fps, threads)


def _ffmpeg_convert(src_file: str, tmp: str, fps: float, threads: int) -> None:
  cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", src_file,
         "-map", "0:v:0", "-map", "0:a:0?",
         # H.264 4:2:0 needs even sizes; CREMA-D's 480x360 is unchanged.
         "-vf", f"fps={fps},scale=trunc(iw/2)*2:trunc(ih/2)*2",
         "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
         "-threads", str(threads), "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", tmp]
  proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
  if proc.returncode != 0 or not os.path.exists(tmp) or os.path.getsize(tmp) == 0:
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    raise RuntimeError(lines[-1] if lines else f"ffmpeg exit status {proc.returncode}")


def convert_dir(src: str, dst: str, fps: float = 25, jobs: int | None = None) -> Report:
  """Converts every video under src into dst (see the module doc); returns what happened to each."""
  if fps <= 0:
    raise UserError(f"--fps must be positive, got {fps}")
  typed_src, src = src, files.user_path(src)
  if not os.path.isdir(src):
    what = "is a file, not a folder" if os.path.exists(src) else "not found"
    raise UserError(f"source directory {what}: {typed_src}; pass --src DIR holding the videos")
  typed_dst, dst = dst, files.check_output_dir(dst, "--dst", "folder of converted videos")
  if src == dst:
    raise UserError("--dst must differ from --src (the outputs would overwrite the inputs)")
  if os.path.commonpath([src, dst]) == src:
    raise UserError(f"--dst {typed_dst} is inside --src {typed_src}: every run would find its own "
                    "outputs among the inputs; choose a --dst outside --src")
  rels = find_videos(src)
  if not rels:
    raise UserError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) found under {typed_src}")
  report = Report()
  todo = []
  seen = {}
  for rel in rels:
    out = output_path(rel, dst)
    if out in seen:  # a.flv and a.mp4 would both become a.mp4
      report.failed.append((os.path.join(src, rel), f"same output {out} as {seen[out]}"))
      continue
    seen[out] = os.path.join(src, rel)
    if is_up_to_date(os.path.join(src, rel), out):
      report.skipped.append(out)
    else:
      todo.append((os.path.join(src, rel), out))
  jobs = max(1, jobs or os.cpu_count() or 1)
  # ffmpeg does the work in subprocesses, so threads are enough to run `jobs` of them at once.
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
  try:
    futures = {pool.submit(convert_one, s, d, fps, 1 if jobs > 1 else 0): (s, d) for s, d in todo}
    for fut in concurrent.futures.as_completed(futures):
      s, d = futures[fut]
      try:
        fut.result()
        report.converted.append(d)
      except (RuntimeError, OSError) as e:
        report.failed.append((s, str(e)))
  finally:
    # Ctrl-C / SIGTERM: the queued videos are dropped; the running ones finish (or fail) whole.
    pool.shutdown(wait=True, cancel_futures=True)
  report.converted.sort()
  report.failed.sort()
  return report


@cli_main
def main(argv=None):
  parser = ArgumentParser(
      prog="python -m data_tools.convert_fps",
      description="Re-encode every video under --src at a fixed frame rate into --dst (mp4, H.264 + AAC), "
                  "in parallel; up-to-date outputs are skipped, failures are listed.")
  parser.add_argument("--src", required=True, help="directory of input videos (searched recursively)")
  parser.add_argument("--dst", required=True, help="output directory (same relative layout, .mp4)")
  parser.add_argument("--fps", type=float, default=25, help="target frame rate (default 25)")
  parser.add_argument("--jobs", type=int, default=None, help="parallel ffmpeg processes (default: all cores)")
  args = parser.parse_args(argv)
  t0 = time.time()
  report = convert_dir(args.src, args.dst, args.fps, args.jobs)
  print(f"{report.summary()} in {time.time() - t0:.1f}s -> {args.dst}")
  for path, reason in report.failed:
    print(f"  failed: {path}: {reason}")
  return 1 if report.failed else 0


if __name__ == "__main__":
  sys.exit(main())
