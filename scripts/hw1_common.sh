# Sourced by hw1_1.sh, hw1_2.sh and hw1_3.sh (the course's inference contracts, SPEC 4).
# hw1_run USAGE NARGS CKPT_VAR DEFAULT_CKPT "dlcv subcommand words" -- ARGS...
# checks the argument count, then runs `dlcv SUBCOMMAND --model CKPT -- ARGS...` where CKPT (a checkpoint, or a
# model of `dlcv export`: ONNX, TorchScript) is $CKPT_VAR if set, else checkpoints/DEFAULT_CKPT beside the
# scripts, and python is $DLCV_PYTHON, else .venv/bin/python beside the scripts, else python3. `--`: an
# argument that starts with a dash is a path, not an option.
hw1_run() {
  local usage="$1" nargs="$2" ckpt_var="$3" default_ckpt="$4" subcommand="$5"
  shift 6
  if [ "$#" -ne "$nargs" ]; then
    echo "usage: $usage" >&2
    exit 2
  fi
  local repo ckpt py
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  ckpt="${!ckpt_var:-$repo/checkpoints/$default_ckpt}"
  if [ ! -e "$ckpt" ]; then
    local script="${usage#bash }"
    echo "${script%% *}: checkpoint not found: $ckpt; set $ckpt_var=RUN/checkpoints/last.pt (RUN: the folder of" \
         "a dlcv training run) or copy that file to $repo/checkpoints/$default_ckpt" >&2
    exit 2
  fi
  py="${DLCV_PYTHON:-$repo/.venv/bin/python}"
  [ -x "$py" ] || py=python3
  # Not `python -m dlcv`, which puts the working folder first on sys.path (a dlcv.py there would run
  # instead of the installed package): -c with the working folder's entry ("") taken off sys.path.
  # shellcheck disable=SC2086  # the subcommand is several words on purpose
  exec "$py" -c 'import sys; sys.path[:1] == [""] and sys.path.pop(0); from dlcv.cli import main; sys.exit(main())' \
    $subcommand --model "$ckpt" -- "$@"
}
