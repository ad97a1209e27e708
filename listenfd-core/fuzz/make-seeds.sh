#!/bin/sh
# Write the seed corpus for the parse_env target: one file per row of the spec's tables
# (see fuzz_targets/parse_env.rs for the format). Re-run after changing the rows.
set -eu
dir="$(dirname "$0")/seeds/parse_env"
mkdir -p "$dir"
n=0
seed() { n=$((n + 1)); printf "$1" > "$dir/row-$(printf %02d $n)"; }
seed '\0\0\0=1'                         # LISTEN_PID unset
seed '\0=abc\0\0=1'                     # not a number
seed '\0=\0\0=1'                        # empty
seed '\0=12x\0\0=1'
seed '\0=100 \0\0=1'                    # trailing space
seed '\0=0x64\0\0=1'                    # base 0 hex
seed '\0=0144\0\0=1'                    # C octal
seed '\0=+100\0\0=1'
seed '\0= \t100\0\0=1'                  # leading whitespace
seed '\0=0\0\0=1'                       # ERANGE
seed '\0=-1\0\0=1'
seed '\0=101\0\0=1'                     # other process
seed 'P\0=100\0=4242\0=1'               # pidfd id matches
seed 'P\0=100\0=4243\0=1'               # pidfd id differs
seed '\0=100'                           # LISTEN_FDS unset
seed '\0=100\0\0=abc'
seed '\0=100\0\0=1\n'
seed '\0=100\0\0=0b10'
seed '\0=100\0\0=0o3'
seed '\0=100\0\0=010'
seed '\0=100\0\0=2147483648'            # overflow
seed '\0=100\0\0=0'
seed '\0=100\0\0=2147483645'            # > INT_MAX - 3
seed '\0=100\0\0=3\0=a::b'
seed '\0=100\0\0=1\0=a\\:b'
seed '\0=100\0\0=1\0=a\\'               # trailing backslash
seed '\0=100\0\0=1\0=a:b'               # count mismatch
seed 'L\0\0\0=2\0\0=10'                 # lenient + LISTEN_FDS_FIRST_FD
echo "wrote $n seeds to $dir"
