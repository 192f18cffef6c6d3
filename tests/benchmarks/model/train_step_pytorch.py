#!/usr/bin/env python3
"""PyTorch eager baseline for the training-step benchmark: the same torchvision architecture as fedtune's (1-channel
stem, 14 outputs), SGD(lr=1e-3, momentum=0.9), BCE-with-logits, random inputs, after warm-up.
Usage: train_step_pytorch.py ARCH SIZE BATCH THREADS SECONDS   (ARCH: mobilenet_v2 | densenet121)
Prints: images_per_s=<float>
"""
import sys
import time

import torch
import torchvision


def build(arch):
    if arch == "mobilenet_v2":
        m = torchvision.models.mobilenet_v2(weights=None, num_classes=14)
        m.features[0][0] = torch.nn.Conv2d(1, 32, 3, 2, 1, bias=False)
    elif arch == "densenet121":
        m = torchvision.models.densenet121(weights=None, num_classes=14)
        m.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    else:
        raise SystemExit(f"unknown arch {arch}")
    return m


def main():
    arch, size, batch, threads, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(arch).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch, 1, size, size)
    y = torch.rand(batch, 14)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(2):  # Warm-up.
        step()
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 3:
        step()
        steps += 1
    elapsed = time.perf_counter() - start
    print(f"images_per_s={steps * batch / elapsed:.3f}")


if __name__ == "__main__":
    main()
