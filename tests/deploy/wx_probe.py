#!/usr/bin/env python3
"""Backs the MemoryDenyWriteExecute= choices of deploy/systemd/ with LibTorch itself.

systemd's MemoryDenyWriteExecute=yes refuses memory that is writable and executable and refuses making memory
executable later; Linux >= 6.3 offers the same rule per process (prctl PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN). Debian's
python3-torch is built from the same PyTorch 1.13 sources as libtorch-dev, so its behaviour is the C++ programs'.

* Required (the coordinator runs with W^X): the coordinator's work under W^X: element-wise arithmetic (FedAvg,
  FedAdam), clipping norms, sorting/median/trimmed mean, and serialization (torch::save/load archives, TorchScript
  module load) must work.
* Reported (why the site agent runs without W^X): whether a convolution (oneDNN generates its CPU kernels at run
  time) still works under W^X.
* Required, when BIN_DIR holds the built programs: `fedtune-site model init` and `model info` (module construction,
  checkpoint write and read: the C++ checkpoint path the coordinator uses) under W^X, inherited across execve.
Usage: wx_probe.py [BIN_DIR]. Exit 77 (skipped, reason printed) when the kernel has no PR_SET_MDWE or python3-torch
is missing."""
import importlib.util
import os
import subprocess
import sys
import tempfile


CHILD = r'''
import ctypes, os, sys
import torch
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    print("prctl(PR_SET_MDWE) failed: errno", ctypes.get_errno()); sys.exit(3)
torch.manual_seed(0)
part = sys.argv[1]
if part == "coordinator":
    # FedAvg / FedAdam / clipping / robust statistics over a few "site deltas".
    deltas = [torch.randn(64, 3, 3, 3) for _ in range(4)]
    weights = torch.tensor([10.0, 20.0, 30.0, 40.0])
    avg = sum(w * d for w, d in zip(weights, deltas)) / weights.sum()
    m = 0.9 * torch.zeros_like(avg) + 0.1 * avg
    v = 0.99 * torch.zeros_like(avg) + 0.01 * avg * avg
    step = 0.01 * m / (v.sqrt() + 1e-3)
    norms = torch.stack([d.norm() for d in deltas])
    clipped = [d * torch.clamp(1.0 / n, max=1.0) for d, n in zip(deltas, norms)]
    stacked = torch.stack(clipped)
    median = stacked.median(dim=0).values
    trimmed = stacked.sort(dim=0).values[1:-1].mean(dim=0)
    assert torch.isfinite(step).all() and torch.isfinite(median).all() and torch.isfinite(trimmed).all()
    half = avg.half().float()
    q = torch.clamp(torch.round(avg / avg.abs().max() * 127), -127, 127).to(torch.int8)
    topk = avg.flatten().abs().topk(10).indices
    # Serialization: a tensor archive and a TorchScript module, as checkpoints are written and read.
    d = sys.argv[2]
    torch.save({"member0/weight": avg, "step": torch.tensor(3)}, os.path.join(d, "t.pt"))
    back = torch.load(os.path.join(d, "t.pt"))
    assert torch.equal(back["member0/weight"], avg)
    module = torch.jit.script(torch.nn.Linear(4, 2))
    module.save(os.path.join(d, "m.pt"))
    loaded = torch.jit.load(os.path.join(d, "m.pt"))
    assert torch.equal(loaded.weight, module.weight)
    print("coordinator workload under W^X: ok")
else:
    try:
        conv = torch.nn.Conv2d(3, 8, 3)
        y = conv(torch.randn(2, 3, 32, 32))
        y.sum().backward()
        print("convolution under W^X: ok")
    except Exception as e:  # Reported, not required.
        print("convolution under W^X: fails:", str(e).splitlines()[0])
'''


EXEC_UNDER_WX = "import ctypes, os, sys; l = ctypes.CDLL(None, use_errno=True); " \
    "sys.exit(3) if l.prctl(65, 1, 0, 0, 0) != 0 else os.execv(sys.argv[1], sys.argv[1:])"


def check_programs(bin_dir, tmp):
    """Returns True when the C++ checkpoint path works under W^X (or the programs are not built: reported)."""
    site = os.path.join(bin_dir, "fedtune-site")
    if not os.access(site, os.X_OK):
        print(f"C++ programs: {site} not built; only the Python probe ran")
        return True
    ckpt = os.path.join(tmp, "wx.ckpt")
    ok = True
    for args in ([site, "model", "init", "--arch", "densenet_tiny", "--image-size", "32", "--out", ckpt],
                 [site, "model", "info", ckpt]):
        r = subprocess.run([sys.executable, "-c", EXEC_UNDER_WX] + args, capture_output=True, text=True, timeout=300)
        print(f"under W^X: {' '.join(args[1:3])}: exit {r.returncode}")
        if r.returncode != 0:
            print(r.stdout[-1000:], r.stderr[-2000:])
            ok = False
    return ok


def main():
    if importlib.util.find_spec("torch") is None:
        print("skipped: python3-torch is not installed")
        return 77
    # Probe PR_SET_MDWE in a child: the flag cannot be cleared once set.
    probe = subprocess.run([sys.executable, "-c", "import ctypes,sys; l=ctypes.CDLL(None, use_errno=True); "
                            "sys.exit(0 if l.prctl(65, 1, 0, 0, 0) == 0 else 1)"])
    if probe.returncode != 0:
        print(f"skipped: this kernel ({os.uname().release}) has no PR_SET_MDWE (Linux >= 6.3)")
        return 77
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = subprocess.run([sys.executable, "-c", CHILD, "coordinator", tmp], capture_output=True,
                                     text=True, timeout=300)
        print(coordinator.stdout.strip(), coordinator.stderr.strip()[-2000:])
        site = subprocess.run([sys.executable, "-c", CHILD, "site", tmp], capture_output=True, text=True, timeout=300)
        print(site.stdout.strip(), site.stderr.strip()[-2000:])
        print("(fedtune-site.service sets MemoryDenyWriteExecute=no for this reason)"
              if "fails" in site.stdout else "")
        programs_ok = check_programs(sys.argv[1], tmp) if len(sys.argv) > 1 else True
    ok = coordinator.returncode == 0 and "ok" in coordinator.stdout and programs_ok
    print("1 passed, 0 failed" if ok else "0 passed, 1 failed: fedtune-coordinator.service must not set "
          "MemoryDenyWriteExecute=yes")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
