"""The same U-Net in PyTorch, as a speed reference for bench/run.py.

Runs in its own virtual environment (bench/setup_torch.sh), never the
project's. Prints one JSON object: training steps/s (16 x 64 x 64 patches,
MSE, Adam) and forward MPix/s on 512 x 512 tiles, for the depth-2,
32-feature network with max-pooling and every skip connection (the
``n2v`` / ``care`` architecture of napari_flax_denoise.model.UNet).
"""

import json
import sys
import time

import torch
from torch import nn


def block(cin, mid, cout):
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(), nn.Conv2d(mid, cout, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, f=32):
        super().__init__()
        self.enc0, self.enc1 = block(1, f, f), block(f, 2 * f, 2 * f)
        self.mid = block(2 * f, 4 * f, 2 * f)
        self.dec1, self.dec0 = block(4 * f, 2 * f, f), block(2 * f, f, f)
        self.head = nn.Conv2d(f, 1, 1)
        self.pool, self.up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        s0 = self.enc0(x)
        s1 = self.enc1(self.pool(s0))
        h = self.mid(self.pool(s1))
        h = self.dec1(torch.cat([self.up(h), s1], 1))
        h = self.dec0(torch.cat([self.up(h), s0], 1))
        return self.head(h)


def best(fn, repeats):
    # Mirrors best_time in bench/run.py on purpose: this file runs in the torch
    # venv, which has neither JAX nor our package to import it from.
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    torch.manual_seed(0)
    net = UNet()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.rand(16, 1, 64, 64), torch.rand(16, 1, 64, 64)

    def train_steps():
        for _ in range(steps):
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            opt.step()

    train_seconds = best(train_steps, 1)
    tile = torch.rand(1, 1, 512, 512)
    with torch.no_grad():
        fwd = best(lambda: net(tile), 3)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "parameters": sum(p.numel() for p in net.parameters()),
                      "train_steps_per_s": steps / train_seconds, "forward_mpix_per_s_512": 512 * 512 / fwd / 1e6}))


if __name__ == "__main__":
    main()
