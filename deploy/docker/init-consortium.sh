#!/bin/sh
# One-shot set-up of the local consortium in docker-compose.yml (the "init" service): the consortium CA, the
# coordinator's server certificate, one key + signed certificate per site and for the operator, a synthetic dataset
# per site (`fedtune synth` with the built-in site profiles) and a small open-source model trained on the synthetic
# "public" dataset. Each output goes to the volume of the party that owns it (see docker-compose.yml); a real site
# makes its own key (`fedtune-site pki request`) and only its CSR travels.
#
# Idempotent: a second run finds /init/ca/ca.pem and exits 0 without changing anything.
# Environment (defaults): FEDTUNE_CONSORTIUM ("Local Consortium"), FEDTUNE_SITES ("site-a site-b site-c"; each must
# be a built-in synth profile), FEDTUNE_IMAGES (400 per site), FEDTUNE_IMAGE_SIZE (64), FEDTUNE_ARCH
# (densenet_tiny), FEDTUNE_PRETRAIN_EPOCHS (10), FEDTUNE_UID (10001: the image's fedtune user, which must own what
# the services read; ownership is changed only when running as root), FEDTUNE_INIT_DIR (/init: where the volumes are
# mounted; tests/deploy runs this script against a temporary folder with the built programs on PATH).
set -eu
consortium="${FEDTUNE_CONSORTIUM:-Local Consortium}"
sites="${FEDTUNE_SITES:-site-a site-b site-c}"
images="${FEDTUNE_IMAGES:-400}"
size="${FEDTUNE_IMAGE_SIZE:-64}"
arch="${FEDTUNE_ARCH:-densenet_tiny}"
uid="${FEDTUNE_UID:-10001}"
epochs="${FEDTUNE_PRETRAIN_EPOCHS:-10}"
init="${FEDTUNE_INIT_DIR:-/init}"

if [ -f "$init/ca/ca.pem" ]; then
  echo "init-consortium: $init/ca/ca.pem exists; the consortium is already set up"
  exit 0
fi

# The CA key stays in the "ca" volume (root-owned, 0600): only this container and the operator use it. The
# coordinator mounts the volume read-only and reads ca.pem, crl.pem and index.json.
fedtune pki init --consortium "$consortium" --out "$init/ca"
fedtune pki server --ca-dir "$init/ca" --out "$init/coordinator-pki" --dns coordinator,localhost --ip 127.0.0.1

seed=10
for site in $sites; do
  fedtune-site pki request --site-id "$site" --out "$init/$site-pki"
  fedtune pki sign --ca-dir "$init/ca" --csr "$init/$site-pki/$site.csr" --role site --expect-cn "$site" \
    --out "$init/$site-pki/$site.pem"
  cp "$init/ca/ca.pem" "$init/$site-pki/ca.pem"
  seed=$((seed + 1))
  fedtune synth --profile "$site" --count "$images" --size "$size" --seed "$seed" --out "$init/$site-data"
done

fedtune pki request --name operator --out "$init/operator-pki"
fedtune pki sign --ca-dir "$init/ca" --csr "$init/operator-pki/operator.csr" --role operator --expect-cn operator \
  --out "$init/operator-pki/operator.pem"
cp "$init/ca/ca.pem" "$init/operator-pki/ca.pem"

# The open-source model: a tiny ensemble pre-trained on the synthetic public dataset.
work="$(mktemp -d)"
fedtune synth --profile public --count $((images * 2)) --size "$size" --seed 1 --out "$work/public"
fedtune-site model init --arch "$arch" --duo "$arch" --image-size "$size" --dropout 0.2 --seed 0 --out "$work/init.ckpt"
cat >"$work/pretrain.textproto" <<CFG
base_model: "init.ckpt"
manifest: "public/manifest.csv"
out_dir: "pretrain"
max_epochs: $epochs
batch_size: 32
learning_rate: 0.05
patience: 4
device: "cpu"
split { train: 0.7 validation: 0.15 test: 0.15 }
CFG
fedtune-site finetune --config "$work/pretrain.textproto"
mkdir -p "$init/coordinator-state/models"
cp "$work/pretrain/model.ckpt" "$init/coordinator-state/models/open-source.ckpt"
rm -rf "$work"

# Everything but the CA belongs to the services' user; private keys stay 0600.
if [ "$(id -u)" -ne 0 ]; then
  echo "init-consortium: consortium '$consortium' ready: sites $sites (not root: ownership unchanged)"
  exit 0
fi
for dir in "$init/coordinator-pki" "$init/coordinator-state" "$init/operator-pki"; do chown -R "$uid:$uid" "$dir"; done
for site in $sites; do
  mkdir -p "$init/$site-state"
  chown -R "$uid:$uid" "$init/$site-pki" "$init/$site-data" "$init/$site-state"
done
echo "init-consortium: consortium '$consortium' ready: sites $sites"
