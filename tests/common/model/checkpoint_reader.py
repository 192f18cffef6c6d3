#!/usr/bin/python3
"""Reads a fedtune checkpoint the way a researcher would, with Debian's python3-torch/torchvision.

Usage: checkpoint_reader.py MODEL.ckpt REFERENCE.pt

The documented one-call load is `torch.load("MODEL.ckpt")["members"][0]`: a plain dict of tensors keyed like
torchvision's state dict. This script loads every member into the torchvision architecture (1-channel stem,
14 outputs) strictly, checks its logits on REFERENCE.pt's "input" against REFERENCE.pt's "logits<i>" (written by
fedtune), and recomputes the weights SHA-256 described in common/model/checkpoint.h. Prints OK and exits 0 on
success; prints the problem and exits 1 otherwise.
"""
import hashlib
import json
import sys

import torch
import torchvision
from torchvision.models.resnet import Bottleneck

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def gray_stem(conv):
    return torch.nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)


def build(config):
    arch, n = config["arch"], config["num_outputs"]
    if arch == "densenet":
        o = config["densenet"]
        m = torchvision.models.DenseNet(growth_rate=o["growth_rate"], block_config=tuple(o["block_config"]),
                                        num_init_features=o["num_init_features"], bn_size=o["bn_size"],
                                        num_classes=n)
        m.features.conv0 = gray_stem(m.features.conv0)
    elif arch == "resnext":
        o = config["resnext"]
        assert o["base_planes"] == 64, "torchvision's ResNet has a fixed 64-channel stem"
        m = torchvision.models.ResNet(Bottleneck, o["layers"], groups=o["groups"],
                                      width_per_group=o["width_per_group"], num_classes=n)
        m.conv1 = gray_stem(m.conv1)
    else:
        m = torchvision.models.MobileNetV2(width_mult=config["mobilenet"]["width_mult"], num_classes=n)
        m.features[0][0] = gray_stem(m.features[0][0])
    return m


def digest(checkpoint):
    sha = hashlib.sha256()
    sections = [("member%d" % i, sd) for i, sd in enumerate(checkpoint["members"])]
    if "duo" in checkpoint:
        sections.append(("duo", checkpoint["duo"]))
    for section, sd in sections:
        for key in sorted(sd):
            t = sd[key].contiguous()
            sha.update(("%s\n%s\n%s\n%s\n" % (section, key, DTYPES[t.dtype],
                                              ",".join(str(d) for d in t.shape))).encode())
            raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            sha.update(raw.numpy().tobytes())
    return sha.hexdigest()


def main(path, reference):
    state_dict = torch.load(path)["members"][0]  # The documented one call.
    assert isinstance(state_dict, dict) and all(torch.is_tensor(v) for v in state_dict.values())
    checkpoint = torch.load(path)
    meta = json.loads(checkpoint["metadata"])
    ref = torch.load(reference)
    torch.set_grad_enabled(False)
    for i, config in enumerate(meta["members"]):
        model = build(config)
        model.load_state_dict(checkpoint["members"][i])  # strict=True
        model.eval()
        diff = (model(ref["input"]) - ref["logits%d" % i]).abs().max().item()
        if diff > 1e-4:
            print("member %d: logits differ by %g" % (i, diff))
            return 1
    if digest(checkpoint) != meta["weights_sha256"]:
        print("digest mismatch: %s vs %s" % (digest(checkpoint), meta["weights_sha256"]))
        return 1
    print("OK %d members, labels %d, digest %s" % (len(meta["members"]), len(meta["labels"]), meta["weights_sha256"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
