#!/usr/bin/env bash
# Measures `batchscore models import` of scikit-learn models exported by scripts/export_sklearn.py:
# N reference pipelines (StandardScaler + OneClassSVM(nu=0.0001, rbf, gamma=0.01), one per
# device and sensor, 720 readings each) and N IsolationForests (100 trees, 256 samples, 4
# sensors). Prints a table: export and import wall time, files, bytes.
#
#   scripts/bench-import.sh [N]     (default 1000)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
n="${1:-1000}"
cd "$root"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/batchscore"
python="$(scripts/python-env.sh)"
work="$(mktemp -d -t batchscore-import.XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$python" - "$work" "$n" <<'PY'
import os, sys, warnings
import joblib, numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM
work, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
os.makedirs(f"{work}/svm"); os.makedirs(f"{work}/iforest")
warnings.simplefilter("ignore")
for i in range(n):
    device, sensor = divmod(i, 5)
    x = rng.normal(10 + sensor, 1 + 0.1 * sensor, (720, 1))
    m = Pipeline([("scaler", StandardScaler()),
                  ("classifier", OneClassSVM(nu=0.0001, kernel="rbf", gamma=0.01))]).fit(x)
    joblib.dump(m, f"{work}/svm/model_{device}_{sensor}.joblib")
    f = IsolationForest(random_state=i).fit(rng.normal(0, 1, (1000, 4)))
    joblib.dump(f, f"{work}/iforest/model_{i}.joblib")
PY
row() { # label, directory of interchange files, import args...
    local label="$1" dir="$2"; shift 2
    local start end
    start=$(date +%s.%N)
    "$bin" -q models import "$dir" "$@" >/dev/null
    end=$(date +%s.%N)
    printf '| %s | %s | %s | %.2f s |\n' "$label" "$(ls "$dir" | wc -l)" "$(du -sh "$dir" | cut -f1)" \
        "$(echo "$end - $start" | bc)"
}
for kind in svm iforest; do
    start=$(date +%s.%N)
    "$python" scripts/export_sklearn.py "$work/$kind" --out "$work/$kind-json" \
        --key-pattern "$([[ $kind == svm ]] && echo 'model_{device}_{sensor}' || echo 'model_{device}')" >/dev/null
    end=$(date +%s.%N)
    echo "export $kind: $(echo "$end - $start" | bc) s" >&2
done
echo
echo "| import | files | size | wall |"
echo "| --- | --- | --- | --- |"
row "$n StandardScaler+OneClassSVM pipelines" "$work/svm-json" --registry "$work/reg-svm" --features value
row "$n IsolationForests (100 trees)" "$work/iforest-json" --registry "$work/reg-if" --features a,b,c,d
