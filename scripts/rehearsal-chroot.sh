#!/usr/bin/env bash
# One container of the cluster rehearsal (affectflow.orchestration.rehearsal): a fresh overlay of the
# image's layers, the pod's volumes bound in, then the command under chroot. Run it inside
# `unshare --mount --pid --fork` (the caller does): every mount here dies with the namespace.
#
#   rehearsal-chroot.sh LOWERS UPPER WORK MERGED [--bind SRC:DST[:ro]]... [--user UID:GID] [--cwd DIR] \
#       -- ENV_FILE CMD [ARG]...
#
# LOWERS is overlayfs's lowerdir (top layer first); UPPER receives every write of the container.
# ENV_FILE holds NUL-separated KEY=VALUE pairs: the container's whole environment (env -i).
set -euo pipefail
lowers=$1 upper=$2 work=$3 merged=$4
shift 4
binds=() user="" cwd=/
while [ $# -gt 0 ]; do
  case $1 in
    --bind) binds+=("$2"); shift 2 ;;
    --user) user=$2; shift 2 ;;
    --cwd) cwd=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "rehearsal-chroot.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
env_file=$1
shift
mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$upper,workdir=$work" "$merged"
mkdir -p "$merged/proc" "$merged/dev" "$merged/sys"
mount -t proc proc "$merged/proc"
mount --rbind /dev "$merged/dev"
for b in ${binds[@]+"${binds[@]}"}; do
  IFS=: read -r src dst mode <<<"$b"
  if [ -d "$src" ]; then mkdir -p "$merged$dst"; else mkdir -p "$(dirname "$merged$dst")"; touch "$merged$dst"; fi
  mount --bind "$src" "$merged$dst"
  if [ "${mode:-}" = ro ]; then mount -o remount,bind,ro "$merged$dst"; fi
done
mapfile -d '' envs < "$env_file"
userspec=()
if [ -n "$user" ]; then userspec=(--userspec="$user"); fi
# `cd` inside the root (the image's WORKDIR), then the command with exactly the container's environment.
exec chroot ${userspec[@]+"${userspec[@]}"} "$merged" /usr/bin/env -i ${envs[@]+"${envs[@]}"} \
  /bin/sh -c 'cd "$0" && exec "$@"' "$cwd" "$@"
