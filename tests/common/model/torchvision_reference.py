#!/usr/bin/python3
"""Writes torchvision models and reference outputs for fedtune's import parity test (state_dict_test.cc).

Run with Debian's python3 (python3-torch 1.13, python3-torchvision 0.14). No downloads: every model is built with
weights=None from a fixed seed; BatchNorm statistics and affine parameters are randomized so that eval-mode outputs
depend on every buffer.

Usage: torchvision_reference.py OUT_DIR

Writes, for ARCH in densenet121, resnext50_32x4d, mobilenet_v2 (ImageNet shape: 3 input channels, 1000 classes):
  ARCH_imagenet.pt      torch.save(model.state_dict()) -- an OrderedDict, as real checkpoints are
  ARCH_imagenet_ref.pt  {"input": [1,1,64,64] gray image, "pooled": pooled features of the image replicated to RGB}
and for the scaled 1-channel, 14-output variants NAME in densenet_tiny, resnext_1111, mobilenet_v2_tiny:
  NAME_gray.pt          state dict
  NAME_gray_ref.pt      {"input": [2,1,64,64], "logits": [2,14]}
plus mobilenet_v2_tiny_gray.safetensors (F32), mobilenet_v2_tiny_gray_f16.safetensors and
mobilenet_v2_tiny_gray_half.pt (the state dict in float16).
"""
import collections
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import Bottleneck


def randomize_batchnorm(model, generator):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            m.num_batches_tracked.fill_(7)


def pooled_features(arch, model, x):
    if arch.startswith("densenet"):
        return F.adaptive_avg_pool2d(F.relu(model.features(x)), 1).flatten(1)
    if arch.startswith("resnext"):
        m = model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return torch.flatten(m.avgpool(x), 1)
    return F.adaptive_avg_pool2d(model.features(x), 1).flatten(1)


def write_safetensors(state, path, dtype):
    names = {torch.float32: "F32", torch.float16: "F16"}
    header, chunks, offset = {}, [], 0
    for key, t in state.items():
        t = t.to(dtype) if t.is_floating_point() else t
        data = t.contiguous().numpy().tobytes()
        kind = names.get(t.dtype, "I64")
        header[key] = {"dtype": kind, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)


def gray_stem(conv):
    return torch.nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)


def main(out):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    torch.set_grad_enabled(False)

    builders = {
        "densenet121": lambda: torchvision.models.densenet121(weights=None),
        "resnext50_32x4d": lambda: torchvision.models.resnext50_32x4d(weights=None),
        "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
    }
    for arch, build in builders.items():
        model = build()
        randomize_batchnorm(model, generator)
        model.eval()
        torch.save(model.state_dict(), os.path.join(out, arch + "_imagenet.pt"))
        gray = torch.rand(1, 1, 64, 64, generator=generator)
        pooled = pooled_features(arch, model, gray.repeat(1, 3, 1, 1))
        torch.save({"input": gray, "pooled": pooled}, os.path.join(out, arch + "_imagenet_ref.pt"))

    def densenet_tiny():
        m = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
                                        num_classes=14)
        m.features.conv0 = gray_stem(m.features.conv0)
        return m

    def resnext_1111():
        m = torchvision.models.ResNet(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4, num_classes=14)
        m.conv1 = gray_stem(m.conv1)
        return m

    def mobilenet_v2_tiny():
        m = torchvision.models.MobileNetV2(width_mult=0.25, num_classes=14)
        m.features[0][0] = gray_stem(m.features[0][0])
        return m

    for name, build in [("densenet_tiny", densenet_tiny), ("resnext_1111", resnext_1111),
                        ("mobilenet_v2_tiny", mobilenet_v2_tiny)]:
        model = build()
        randomize_batchnorm(model, generator)
        model.eval()
        state = model.state_dict()
        torch.save(state, os.path.join(out, name + "_gray.pt"))
        x = torch.rand(2, 1, 64, 64, generator=generator)
        torch.save({"input": x, "logits": model(x)}, os.path.join(out, name + "_gray_ref.pt"))
        if name == "mobilenet_v2_tiny":
            write_safetensors(state, os.path.join(out, name + "_gray.safetensors"), torch.float32)
            write_safetensors(state, os.path.join(out, name + "_gray_f16.safetensors"), torch.float16)
            half = collections.OrderedDict(
                (k, v.half() if v.is_floating_point() else v) for k, v in state.items())
            torch.save(half, os.path.join(out, name + "_gray_half.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
