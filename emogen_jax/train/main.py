"""``python -m emogen_jax.train``: trains one stage, named by its config.

  python -m emogen_jax.train --config configs/<stage>.py --workdir W --config.data_dir=D
  python -m emogen_jax.train --config configs/<stage>.py:smoke --workdir W --config.synthetic_data=True

Flags: --config (an ml_collections config file, fields overridable as --config.FIELD=VALUE),
--workdir (checkpoints, logs, samples; an existing one resumes), and the multi-host start-up
flags. The work is ``emogen_jax.train.loop.train_and_evaluate``.
"""

from __future__ import annotations

import os
import sys

from emogen_jax.data import files
from emogen_jax.errors import UserError, cli_main
from emogen_jax.train import distributed
from emogen_jax.train.loop import train_and_evaluate


def _flag_values():
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "Training config file, e.g. configs/emogen.py or configs/emogen.py:smoke; "
      "override fields with --config.FIELD=VALUE.", flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples "
                      "(an existing one resumes from its latest checkpoint).", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.", flag_values=fv)
  return fv


def _check_config_path(argv):
  """Checks the --config file and rewrites its path in ``argv`` as an absolute one (``~`` works)."""
  for i in range(1, len(argv)):
    if argv[i].startswith("--config="):
      j, prefix, value = i, "--config=", argv[i].split("=", 1)[1]
    elif argv[i] == "--config" and i + 1 < len(argv):
      j, prefix, value = i + 1, "", argv[i + 1]
    else:
      continue
    path, sep, variant = value.partition(":")
    if not os.path.isfile(files.user_path(path)):
      raise UserError(f"--config {path!r} is not a file; use one of configs/syncnet.py, "
                      "configs/emotion_disc.py, configs/emogen.py (optionally with :smoke)")
    argv[j] = prefix + files.user_path(path) + sep + variant


def _unknown_field(argv, error: Exception) -> None:
  """Raises a UserError naming the --config.FIELD override whose FIELD the config lacks (the flag
  parser reports only the bare key, e.g. "'foo'")."""
  config_file = next((a.split("=", 1)[1] if "=" in a else argv[i + 1] for i, a in enumerate(argv)
                      if a.split("=", 1)[0] == "--config" and ("=" in a or i + 1 < len(argv))), "")
  for arg in argv[1:]:
    if arg.startswith("--config."):
      name = arg[len("--config."):].split("=", 1)[0]
      if repr(name.split(".")[-1]) in str(error):
        raise UserError(f"{arg}: the config {config_file} has no field {name!r}; check the "
                        "spelling against the fields listed in that file") from None


@cli_main
def main(argv=None) -> int:
  from absl import flags
  argv = list(sys.argv if argv is None else [sys.argv[0]] + list(argv))
  fv = _flag_values()
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(__doc__)
    print(fv.main_module_help() if hasattr(fv, "main_module_help") else fv.get_help())
    return 0
  _check_config_path(argv)
  saved_argv = sys.argv
  try:
    # ml_collections' config flag finds the --config.FIELD overrides in sys.argv itself.
    sys.argv = argv
    fv(argv)
    config = fv["config"].value
    if config is not None:
      config.stage  # noqa: B018 - a config file that failed to load raises here
  except (flags.Error, ValueError, AttributeError, KeyError, OSError) as e:
    _unknown_field(argv, e)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # A config file that raised: its own message is the last line of the quoted traceback.
    msg = lines[-1] if any(l.startswith("Traceback") for l in lines) else " ".join(lines)
    raise UserError(f"bad command line: {msg[:400]} (see --help)") from None
  finally:
    sys.argv = saved_argv
  if config is None:
    raise UserError("--config is required, e.g. --config configs/emogen.py:smoke")
  if not fv["workdir"].value:
    raise UserError("--workdir is required: the directory for checkpoints and logs")
  distributed.initialize(fv["coordinator_address"].value, fv["num_processes"].value,
                         fv["process_id"].value)
  workdir = files.check_output_dir(fv["workdir"].value, "--workdir", "training workdir")
  with files.made_dirs(workdir):  # a run that fails before writing anything leaves no folder
    summary = train_and_evaluate(config, workdir)
  return 0 if summary else 1


if __name__ == "__main__":
  from emogen_jax.allocator import use_fast_allocator
  use_fast_allocator()  # may re-execute this command with tcmalloc preloaded
  sys.exit(main())
