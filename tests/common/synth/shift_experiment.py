#!/usr/bin/python3
"""The study's hypothesis on synthetic data, with a small CNN (Debian's python3-torch, PIL, sklearn).

Trains a 4-layer CNN on `fedtune synth --profile public` (3000 images, 64 px), evaluates it on each hospital profile
(site-a, site-b, site-c; AUC against truth.csv), fine-tunes it on 800 images of that site and evaluates again.
Not part of the test suite: it takes ~5-10 minutes on two CPU cores. Usage:

    /usr/bin/python3 tests/common/synth/shift_experiment.py build/bin/fedtune [EPOCHS]

Result with the built-in profiles (8 epochs; mean AUC over the 14 labels against truth.csv, 600 test images per site;
training labels from manifest.csv with uncertain -> 1, blank -> 0):
    public -> public 0.902
    site-a: public model 0.623 -> fine-tuned 0.856, better on 14/14 labels
    site-b: public model 0.748 -> fine-tuned 0.867, better on 14/14 labels
    site-c: public model 0.645 -> fine-tuned 0.862, better on 14/14 labels
"""
import copy
import csv
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from sklearn.metrics import roc_auc_score


def synth(fedtune, root, profile, count, seed, name):
    out = f'{root}/{name}'
    subprocess.run([fedtune, 'synth', '--profile', profile, '--count', str(count), '--size', '64', '--seed',
                    str(seed), '--out', out], check=True, stdout=subprocess.DEVNULL)
    rows = list(csv.DictReader(open(f'{out}/manifest.csv')))
    truth = list(csv.DictReader(open(f'{out}/truth.csv')))
    names = list(rows[0].keys())[5:]
    x = np.stack([np.asarray(Image.open(f'{out}/' + r['Path']), dtype=np.float32) / 255.0 for r in rows])
    reported = np.array([[1.0 if r[n] in ('1.0', '-1.0') else 0.0 for n in names] for r in rows], np.float32)
    true = np.array([[float(r[n]) for n in names] for r in truth], np.float32)
    return torch.tensor((x[:, None] - 0.449) / 0.226), torch.tensor(reported), true, names


def net():
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*block(1, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
                         nn.MaxPool2d(2), *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(64, 14))


def train(model, x, y, epochs, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            batch = x[idx]
            flip = torch.rand(len(batch)) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
            loss = nn.functional.binary_cross_entropy_with_logits(model(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def evaluate(model, x, truth, names):
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])).numpy()
    return {n: roc_auc_score(truth[:, j], p[:, j]) for j, n in enumerate(names) if 0 < truth[:, j].sum() < len(truth)}


def main():
    fedtune = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    torch.manual_seed(0)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as root:
        xp, yp, _, names = synth(fedtune, root, 'public', 3000, 11, 'public_train')
        xpt, _, tpt, _ = synth(fedtune, root, 'public', 600, 12, 'public_test')
        model = net()
        train(model, xp, yp, epochs, 2e-3)
        print(f'public -> public {np.mean(list(evaluate(model, xpt, tpt, names).values())):.3f}')
        for site in ['site-a', 'site-b', 'site-c']:
            xs, ys, _, _ = synth(fedtune, root, site, 800, 13, f'{site}_train')
            xst, _, tst, _ = synth(fedtune, root, site, 600, 14, f'{site}_test')
            base = evaluate(model, xst, tst, names)
            tuned = copy.deepcopy(model)
            train(tuned, xs, ys, 6, 1e-3)
            fine = evaluate(tuned, xst, tst, names)
            better = sum(fine[k] > base[k] for k in base)
            print(f'{site}: public model {np.mean(list(base.values())):.3f} -> fine-tuned '
                  f'{np.mean(list(fine.values())):.3f}, better on {better}/{len(base)} labels')


if __name__ == '__main__':
    main()
