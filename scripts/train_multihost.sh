#!/usr/bin/env bash
# Launch one training run over many hosts: a TPU pod slice, or a cluster of GPU machines.
#
# TPU pod (run from your workstation; every worker runs the same command, JAX finds its peers):
#   scripts/train_multihost.sh tpu NAME ZONE  configs/emogen.py  /mnt/shared/emogen  [--config.x=y ...]
# GPU hosts (run on EVERY host; process 0's address is the coordinator):
#   scripts/train_multihost.sh gpu HOST0:12345 NUM_HOSTS HOST_INDEX configs/emogen.py /mnt/shared/emogen [...]
#
# The workdir must be a directory every host sees (NFS, Filestore, a GCS FUSE mount): all hosts write
# their shards of each orbax checkpoint there, and process 0 writes logs and samples. Each host reads its
# own shard of the training data (config.data_dir, also shared or copied to every host).
# The global batch (config.batch_size) is divided over all devices of all hosts: it must divide evenly.
set -euo pipefail
mode=${1:?usage: see the header of this script}
shift
case "$mode" in
  tpu)
    name=${1:?TPU name}; zone=${2:?zone}; config=${3:?config}; workdir=${4:?workdir}; shift 4
    cmd="cd ~/emogen_jax && python3 -m emogen_jax.train --config $config --workdir $workdir $*"
    exec gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$cmd"
    ;;
  gpu)
    coord=${1:?coordinator host:port}; n=${2:?number of hosts}; idx=${3:?this host index}
    config=${4:?config}; workdir=${5:?workdir}; shift 5
    exec python3 -m emogen_jax.train --config "$config" --workdir "$workdir" \
      --coordinator_address "$coord" --num_processes "$n" --process_id "$idx" "$@"
    ;;
  *)
    echo "error: unknown mode '$mode'; use 'tpu' or 'gpu' (see the header of $0)" >&2
    exit 2
    ;;
esac
