#!/bin/sh
# A journaled ext4 file system in a file, mounted for the benchmarks' --workdir (run as root):
#
#     python benchmarks/forward.py --workdir "$(sh benchmarks/journaled_fs.sh)/bench"
#
# For machines whose root file system has no journal (as some VM images): there every new
# file costs 0.5-0.9 ms after many were removed (docs/operations.md, "The data directory's
# file system"; `python benchmarks/file_churn.py` shows it), a cost an operator's data
# directory on a journaled ext4 or XFS does not have. Prints the mount point.
set -eu
IMAGE=${1:-/var/tmp/dicom-router-bench.img}
MOUNT=${2:-/mnt/dicom-router-bench}
SIZE=${SIZE:-8G}
if mountpoint -q "$MOUNT"; then
    echo "$MOUNT"
    exit 0
fi
if [ ! -f "$IMAGE" ]; then
    truncate -s "$SIZE" "$IMAGE"
    mkfs.ext4 -q -F "$IMAGE" >&2
fi
mkdir -p "$MOUNT"
mount -o loop "$IMAGE" "$MOUNT" >&2
echo "$MOUNT"
