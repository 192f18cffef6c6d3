#!/usr/bin/env bash
# A manifest from a PACS export folder (issue 17), with the real programs: `fedtune synth --dicom` writes 1,000+
# DICOM files and a labels CSV; `fedtune-site data index` is stopped part-way (--stop-after) and resumed, reading only
# the rest; its report names the unmatched study, the label row without a study, the duplicate SOP instance (both
# files), the non-image objects, the study without a frontal view and the unreadable files; `data check` accepts the
# manifest and `finetune` trains on it for one epoch; the hospital-IT guide's PACS commands run as written.
# Usage: pacs_index_test.sh BIN_DIR
set -euo pipefail
bin="$1"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
work_dir pacs_index
cd "$work"

fail() { echo "FAIL: $*"; exit 1; }

"$bin/fedtune" synth --dicom --profile site-a --count 1000 --size 32 --seed 3 --threads 2 --out export
# Files a real export folder may hold besides images: notes, a symbolic link loop, a dangling link.
echo "exported by PACS" > export/dicom/README.txt
ln -s . export/dicom/loop
ln -s nowhere.dcm export/dicom/dangling.dcm
openssl rand -hex 32 > site.secret

index=("$bin/fedtune-site" data index --dicom-dir export/dicom --labels export/labels.csv --key AccessionNumber
       --secret-file site.secret --out manifest.csv --report report.json --threads 2)

# Interrupted: the first 400 headers are recorded, then the run stops as a killed one would (exit 1, no manifest).
set +e
"${index[@]}" --stop-after 400 > stopped.txt 2>&1
rc=$?
set -e
[[ $rc -eq 1 ]] || { cat stopped.txt; fail "--stop-after: exit $rc, expected 1"; }
grep -q "rerun to go on" stopped.txt || fail "the stopped run does not say how to resume"
[[ ! -e manifest.csv ]] || fail "a stopped run wrote a manifest"
recorded="$(/usr/bin/python3 -c '
import sqlite3
print(sqlite3.connect("manifest.csv.index-state").execute("SELECT COUNT(*) FROM files").fetchone()[0])')"
[[ "$recorded" -eq 400 ]] || fail "state file holds $recorded files after --stop-after 400"

# Resumed: only the rest is read.
"${index[@]}" > index.txt
cat index.txt
total="$(find export/dicom -type f | wc -l)"
grep -q "($((total - 400)) headers read, 400 unchanged from the state file)" index.txt ||
  fail "the resumed run did not read exactly the $((total - 400)) files left"

# Every report case, with file names.
grep -q "^label rows without a study in the export: 1" index.txt || fail "label row without a study"
grep -q "AccessionNumber ACC9999999" index.txt || fail "ACC9999999 not reported"
grep -Eq "^studies without labels in export/labels.csv \(left out\): 1" index.txt || fail "unmatched study count"
grep -Eq "^  AccessionNumber ACC[0-9]{7}: e.g. ST[0-9]{6}/SE00000[12]/IM000001.dcm" index.txt ||
  fail "unmatched study without a file name"
grep -Eq "^  ST000001/SE000001/IM000002.dcm: same SOP Instance UID [0-9.]+ as ST000001/SE000001/IM000001.dcm \(kept\)" \
  index.txt || fail "duplicate SOP instance not reported with both files"
grep -q "ST000001/SE000900/IM000001.dcm: non-image object: BasicTextSRStorage" index.txt || fail "SR not reported"
grep -q "ST000001/SE000901/IM000001.dcm: non-image object: GrayscaleSoftcopyPresentationStateStorage" index.txt ||
  fail "presentation state not reported"
grep -q "^studies without a frontal view (left out): 1" index.txt || fail "study without a frontal view"
grep -q "README.txt: not a DICOM Part-10 file" index.txt || fail "README.txt not reported"
grep -q "loop: folder already visited" index.txt || fail "symbolic link loop not reported"
grep -q "dangling.dcm: dangling symbolic link" index.txt || fail "dangling link not reported"
/usr/bin/python3 - <<'PY'
import json
r = json.load(open("report.json"))
assert r["duplicate_instances"][0]["file"] == "ST000001/SE000001/IM000002.dcm", r["duplicate_instances"]
assert r["label_rows_without_study"][0]["key"] == "ACC9999999", r["label_rows_without_study"]
assert len(r["studies_without_labels"]) == 1 and len(r["non_image_objects"]) == 2, r
assert r["rows"] > 900, r["rows"]
print("report.json: %d rows of %d studies" % (r["rows"], r["studies_indexed"]))
PY

# No raw patient id in the manifest: PatientID (MRNnnnnnnn) is pseudonymized.
if grep -q "MRN" manifest.csv; then fail "raw PatientID in the manifest"; fi

# A rerun reads nothing and writes the same manifest.
cp manifest.csv first.csv
"${index[@]}" > again.txt
grep -q "(0 headers read, $total unchanged" again.txt || fail "the rerun read headers again"
cmp -s manifest.csv first.csv || fail "the rerun's manifest differs"

# A real SIGKILL mid-scan: once the state file holds a first batch (8 files: --batch-size 8), the process is killed
# while it reads the rest; the rerun reads only what the state file lacks and writes the same manifest. One thread,
# so that the scan lasts long enough to be killed on a fast machine too; python's sqlite3 module polls and kills at
# once (the sqlite3 command-line tool may not be installed).
killed=("$bin/fedtune-site" data index --dicom-dir export/dicom --labels export/labels.csv --secret-file site.secret
        --out killed.csv --state killed.state --threads 1)
"${killed[@]}" --batch-size 8 > /dev/null 2>&1 &
pid=$!
pids+=("$pid")
/usr/bin/python3 - "$pid" <<'PY'
import os, signal, sqlite3, sys, time
pid = int(sys.argv[1])
count = 0
deadline = time.time() + 120
while time.time() < deadline:
    try:
        if not os.path.exists("killed.state"):
            raise sqlite3.OperationalError("not yet")  # Connecting would create it.
        db = sqlite3.connect("killed.state", timeout=2)
        count = db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        db.close()
    except sqlite3.Error:
        count = 0  # No file or no table yet.
    if count > 0:
        break
    time.sleep(0.002)
os.kill(pid, signal.SIGKILL)
PY
wait "$pid" 2>/dev/null || true
recorded="$(/usr/bin/python3 -c '
import sqlite3
print(sqlite3.connect("killed.state").execute("SELECT COUNT(*) FROM files").fetchone()[0])')"
[[ "$recorded" -gt 0 && "$recorded" -lt "$total" ]] ||
  fail "the kill did not land mid-scan: $recorded of $total files recorded"
"${killed[@]}" > killed.txt
grep -q "($((total - recorded)) headers read, $recorded unchanged" killed.txt ||
  fail "after a kill with $recorded files recorded, the rerun read $(grep -o '([0-9]* headers read' killed.txt)"
cmp -s killed.csv manifest.csv || fail "the manifest after a kill differs"
echo "killed after $recorded of $total files were recorded; the rerun read the other $((total - recorded))"

# The manifest's paths are relative to --dicom-dir: the data root for data check and finetune.
"$bin/fedtune-site" data check --manifest manifest.csv --root export/dicom --threads 2 | tail -1
"$bin/fedtune-site" model init --arch densenet_tiny --image-size 32 --seed 0 --out init.ckpt >/dev/null
cat > finetune.textproto <<'CFG'
base_model: "init.ckpt" manifest: "manifest.csv" data_root: "export/dicom" out_dir: "site" max_epochs: 1
batch_size: 32 learning_rate: 0.01 device: "cpu" threads: 2 loader_threads: 1
split { train: 0.7 validation: 0.15 test: 0.15 }
CFG
FEDTUNE_LOG_LEVEL=1 "$bin/fedtune-site" finetune --config finetune.textproto
[[ -s site/model.ckpt ]] || fail "finetune wrote no model"

# The hospital-IT guide's commands (its "From a PACS export folder" block), run as written with these programs.
guide="$(dirname "${BASH_SOURCE[0]}")/../../docs/hospital-it-guide.md"
awk '/^### From a PACS export folder/ {on = 1} on && /^```/ {n++; next} on && n == 1 {print} n >= 2 {exit}' \
  "$guide" > guide.sh
grep -q "data index" guide.sh || fail "no data index command found in the guide's PACS section"
mkdir guide && (cd guide && PATH="$bin:$PATH" bash -euo pipefail ../guide.sh > ../guide.txt 2>&1) ||
  { cat guide.txt; fail "the guide's PACS commands failed"; }
grep -q "OK: no problems found" guide.txt || { cat guide.txt; fail "the guide's data check found problems"; }
echo "1 passed, 0 failed"
