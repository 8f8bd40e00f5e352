#!/usr/bin/env bash
# One pair of the studio-versus-CLI training measurement (docs/BENCHMARKS.md, issue 15):
# the studio under Xvfb trains on the demo corpus with its defaults, training view open, for
# ~75 s; then (or first, with ORDER=cli-first) the CLI trains with the same settings. Prints the
# median per-step tokens/s of steps 2-75 from each run's trainer.json.
#   Xvfb :99 -screen 0 1600x1000x24 -nolisten tcp &   # and xdotool, imagemagick's import
#   ECHOAI=target/release/echoai ORDER=studio-first .ci/studio-vs-cli.sh TAG
# The clicks are the 1600x1000 layout's: Train tab, Demo corpus, Training view, Start, Stop.
set -u
TAG=${1:-pair}; ORDER=${ORDER:-studio-first}
E=${ECHOAI:-target/release/echoai}; WORK=${WORK:-/tmp/studio-vs-cli}
CORPUS=$(cd "$(dirname "$0")/.." && pwd)/assets/corpus
export DISPLAY=${DISPLAY:-:99}
mkdir -p "$WORK"
median() {
  python3 - "$1" <<'PY'
import json, statistics, sys
def points(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k == "points" and isinstance(v, list):
                return v
            r = points(v)
            if r is not None:
                return r
pts = points(json.load(open(sys.argv[1])))
print(len(pts), "steps; median tokens/s of steps 2-75: %.0f"
      % statistics.median(p["tokens_per_s"] for p in pts if 2 <= p["step"] <= 75))
PY
}
studio() {
  local home=$WORK/home-$TAG; rm -rf "$home"; mkdir -p "$home"
  HOME=$home "$E" > "$WORK/studio-$TAG.log" 2>&1 &
  local pid=$!
  sleep 8
  xdotool mousemove 107 37 click 1; sleep 1
  xdotool mousemove 172 116 click 1; sleep 6
  xdotool mousemove 462 43 click 1; sleep 1
  xdotool mousemove 53 397 click 1; sleep 75
  import -window root "$WORK/pair-$TAG.png"
  xdotool mousemove 159 421 click 1; sleep 10
  kill "$pid"; sleep 2
  echo "$TAG studio: $(median "$(find "$home" -name trainer.json | head -1)")"
}
cli() {
  rm -rf "$WORK/cli-$TAG"
  "$E" train --data "$CORPUS" --out "$WORK/cli-$TAG" --model lstm-attention --embed 128 --hidden 256 \
    --layers 2 --dropout 0.1 --window 64 --heads 4 --batch 16 --seq 256 --lr 0.001 --warmup 200 \
    --steps 110 --validate-every 100 --checkpoint-every 1000 --sample-every 500 --json > /dev/null 2>&1
  echo "$TAG cli: $(median "$WORK/cli-$TAG/trainer.json")"
}
if [ "$ORDER" = cli-first ]; then cli; studio; else studio; cli; fi
