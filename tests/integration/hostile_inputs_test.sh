#!/usr/bin/env bash
# Hostile inputs against the real programs, as the robustness review of issue 10 tried them: each must be refused
# with a clear message naming the file and exit status 2 (bad input), never a crash, an abort or a memory blow-up.
#   - a deeply nested pickle (`fedtune-site model import`; the same reader loads every checkpoint a coordinator sends)
#   - a .pt whose data record is a deflate bomb (zip record sizes are checked before anything is read)
#   - a .pt whose pickle rebuilds one storage again and again (bounded materialized bytes)
#   - a DICOM that declares 65535 x 65535 pixels over 16 bytes (`data convert`, `data check`)
# Each runs under a 7 GiB address-space limit (an idle program maps about 3): a regression that allocates what the
# file claims fails by running out of memory (an abort or bad_alloc exit) instead of passing slowly. Not under a
# sanitizer (ASAN_OPTIONS or TSAN_OPTIONS set): their shadow memory needs terabytes of address space.
# Usage: hostile_inputs_test.sh BIN_DIR
set -euo pipefail
bin="$1"
work="$(mktemp -d "${TMPDIR:-/tmp}/fedtune_hostile_XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

/usr/bin/python3 - <<'PY'
import struct, zipfile
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

def archive(name, pickle, records=(), deflate=False):
    # As torch.save lays it out (stored records), except that with deflate=True the storage records are deflated.
    with zipfile.ZipFile(name, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle)
        z.writestr("archive/version", "3\n")
        for key, data in records:
            z.writestr("archive/data/" + key, data, zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)

# Depth 5000 of nested tuples in about 10 KB: ( ... N t ... t.
archive("nested.pt", b"\x80\x02" + b"(" * 5000 + b"N" + b"t" * 5000 + b".")
# A state dict {"w": tensor} whose one storage record deflates from 256 MiB of zeros to a few hundred KB.
def state_dict(key, numel, count):
    out = b"\x80\x02}q\x00("
    for i in range(count):
        name = ("w%d" % i).encode()
        out += b"X" + struct.pack("<I", len(name)) + name
        out += b"ctorch._utils\n_rebuild_tensor_v2\n("
        out += b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX" + struct.pack("<I", len(key)) + key.encode()
        out += b"X\x03\x00\x00\x00cpuJ" + struct.pack("<i", numel) + b"tQ"
        out += b"K\x00J" + struct.pack("<i", numel) + b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR"
    return out + b"u."
archive("bomb.pt", state_dict("0", 64 << 20, 1), [("0", bytes(256 << 20))], deflate=True)
archive("rebuild.pt", state_dict("0", 1 << 18, 200), [("0", bytes(1 << 20))])

meta = FileMetaDataset()
meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
meta.MediaStorageSOPInstanceUID = generate_uid()
meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds = Dataset()
ds.file_meta = meta
ds.SOPClassUID = meta.MediaStorageSOPClassUID
ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
ds.Modality = "DX"
ds.Rows = ds.Columns = 65535
ds.SamplesPerPixel = 1
ds.PhotometricInterpretation = "MONOCHROME2"
ds.BitsAllocated = ds.BitsStored = 16
ds.HighBit = 15
ds.PixelRepresentation = 0
ds.PixelData = bytes(16)
ds.is_little_endian, ds.is_implicit_VR = True, False
ds.save_as("huge.dcm", write_like_original=False)
with open("manifest.csv", "w") as f:
    f.write("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding\nhuge.dcm,Male,50,Frontal,PA,1.0\n")
PY
ls -l "$work" | sed 's/^/  /'

failures=0
# expect NAME EXPECTED_TEXT COMMAND...: exit status 2 and EXPECTED_TEXT (a regular expression) in the output.
expect() {
  local name="$1" text="$2"
  shift 2
  local rc=0 start
  start=$(date +%s)
  local limit_kb=$((7 << 20))
  [[ -n "${ASAN_OPTIONS:-}${TSAN_OPTIONS:-}" ]] && limit_kb=unlimited
  (ulimit -v "$limit_kb"; "$@") >"$work/$name.out" 2>&1 || rc=$?
  if [[ $rc -eq 2 ]] && grep -qE "$text" "$work/$name.out"; then
    echo "ok   $name: exit 2 in $(( $(date +%s) - start )) s: $(grep -m1 -E "$text" "$work/$name.out" | cut -c1-160)"
  else
    echo "FAIL $name: exit $rc (expected 2 and /$text/):"
    tail -5 "$work/$name.out" | sed 's/^/       /'
    failures=$((failures + 1))
  fi
}
expect nested_pickle "nested.pt.*(deep|depth|nest)" \
  "$bin/fedtune-site" model import --state-dict nested.pt --arch mobilenet_v2_tiny --out nested.ckpt
expect deflate_bomb "bomb.pt.*data/0.*(compress|stored|deflat)" \
  "$bin/fedtune-site" model import --state-dict bomb.pt --arch mobilenet_v2_tiny --out bomb.ckpt
expect repeated_rebuilds "rebuild.pt.*(bytes|materializ)" \
  "$bin/fedtune-site" model import --state-dict rebuild.pt --arch mobilenet_v2_tiny --out rebuild.ckpt
expect huge_dicom_convert "huge.dcm.*(pixel|limit)" "$bin/fedtune-site" data convert --in huge.dcm --out huge.png
expect huge_dicom_check "huge.dcm.*(pixel|limit)" "$bin/fedtune-site" data check --manifest manifest.csv --root .
[[ ! -e nested.ckpt && ! -e bomb.ckpt && ! -e rebuild.ckpt && ! -e huge.png ]] || { echo "FAIL an output was written"; failures=$((failures + 1)); }
echo "$((5 - failures)) passed, $failures failed"
[[ $failures -eq 0 ]]
