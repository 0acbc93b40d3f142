"""Training on the GPU, for bench/gpu.py: our trainer against the same U-Net trained in PyTorch on the same chip.

* steps/s of ``train_iter`` (care and n2v2, masking included) at 16 x 64² and 128 x 128² patches, against a
  plain PyTorch loop (Adam, MSE; fp32, TF32 and bf16 autocast) on the same batches;
* the time from starting a run to its first step, in this process (compiling) and in a fresh one (compile cache);
* the PSNR each reaches on scikit-image's camera (Gaussian sigma 25) after the same wall-clock budget of care
  training (noisy -> clean crops), denoised whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_flax_denoise import Config, denoise, psnr, train_iter
from napari_flax_denoise.progress import drive

HERE = Path(__file__).parent
SIGMA = 25.0


def torch_on_gpu():
    """``(torch, UNet)`` with the same U-Net as ours (bench/torch_peer.py) when PyTorch sees a GPU, else None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    sys.path.insert(0, str(HERE))
    from torch_peer import UNet

    return torch, UNet


def our_steps_per_s(algorithm, batch, patch, steps, precision="float32"):
    """Steps/s of our trainer after its first dispatch, and the seconds to that first step."""
    image = np.random.default_rng(2).normal(100, 20, (1024, 1024)).astype(np.float32)
    config = Config(algorithm=algorithm, batch_size=batch, patch_size=patch, epochs=1, steps_per_epoch=steps,
                    val_fraction=0.0, precision=precision)
    started = time.perf_counter()
    run = train_iter(image, axes="YX", targets=None if config.self_supervised else image, config=config)
    next(run)
    first = time.perf_counter() - started
    timed, done = time.perf_counter(), 1
    for _ in run:
        done += 1
    return (done - 1) / (time.perf_counter() - timed), first


def torch_steps_per_s(batch, patch, steps):
    """Steps/s of the same U-Net trained in PyTorch on this GPU (fp32, TF32, bf16 autocast), or None."""
    found = torch_on_gpu()
    if found is None:
        return None
    torch, UNet = found

    rates = {}
    x, y = torch.rand(batch, 1, patch, patch, device="cuda"), torch.rand(batch, 1, patch, patch, device="cuda")
    for name, tf32, autocast in [("fp32", False, False), ("tf32", True, False), ("bf16", False, True)]:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        net = UNet().cuda()
        opt = torch.optim.Adam(net.parameters(), 1e-3)

        def loop(count):
            for _ in range(count):
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
                    loss = ((net(x) - y) ** 2).mean()
                loss.backward()
                opt.step()
            torch.cuda.synchronize()

        loop(10)
        start = time.perf_counter()
        loop(steps)
        rates[name] = steps / (time.perf_counter() - start)
    return rates


def first_step_in_a_new_process(cache):
    """Seconds from start_run to the first step in a fresh process whose compile cache a first process filled."""
    script = ("import time, numpy as np; from napari_flax_denoise.runtime.backend import configure_process; "
              "from napari_flax_denoise.runtime.compile_cache import enable_compilation_cache; "
              "configure_process('train'); enable_compilation_cache(); "
              "from napari_flax_denoise import Config, train_iter; "
              "image = np.random.default_rng(2).normal(100, 20, (1024, 1024)).astype(np.float32); "
              "config = Config(batch_size=16, patch_size=64, epochs=1, steps_per_epoch=4, val_fraction=0.0); "
              "t = time.perf_counter(); next(train_iter(image, axes='YX', config=config)); "
              "print(time.perf_counter() - t)")
    env = {**os.environ, "NAPARI_FLAX_DENOISE_CACHE": str(cache)}
    times = [float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                  env=env).stdout.split()[-1]) for _ in range(2)]
    return times[1]


def camera_pair():
    from skimage import data

    clean = data.camera().astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0, SIGMA, clean.shape).astype(np.float32)
    return noisy, clean


def our_psnr_after(budget, batch, patch, precision="float32"):
    """PSNR on camera after ``budget`` seconds of our care training (compiling included)."""
    noisy, clean = camera_pair()
    config = Config(algorithm="care", batch_size=batch, patch_size=patch, epochs=1, steps_per_epoch=10**6,
                    val_fraction=0.0, precision=precision)
    started = time.perf_counter()
    result = drive(train_iter(noisy, axes="YX", targets=clean, config=config,
                              stop=lambda: time.perf_counter() - started > budget))
    return psnr(denoise(noisy, result.model, axes="YX"), clean, data_range=255), result.model.info["steps"]


def torch_psnr_after(budget, batch, patch):
    """PSNR on camera after ``budget`` seconds of the same care training in PyTorch (TF32), or None."""
    found = torch_on_gpu()
    if found is None:
        return None
    torch, UNet = found

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    noisy, clean = camera_pair()
    low, high = np.percentile(noisy, (1, 99.8))
    scale = high - low
    x = torch.tensor((noisy - low) / scale, device="cuda")[None, None]
    y = torch.tensor((clean - low) / scale, device="cuda")[None, None]
    net = UNet().cuda()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    generator = torch.Generator(device="cuda").manual_seed(0)
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < budget:
        top = torch.randint(0, x.shape[-2] - patch + 1, (batch,), device="cuda", generator=generator)
        left = torch.randint(0, x.shape[-1] - patch + 1, (batch,), device="cuda", generator=generator)
        rows = (top[:, None] + torch.arange(patch, device="cuda"))[:, :, None]
        cols = (left[:, None] + torch.arange(patch, device="cuda"))[:, None, :]
        xb, yb = x[0, 0][rows, cols][:, None], y[0, 0][rows, cols][:, None]
        opt.zero_grad(set_to_none=True)
        loss = ((net(xb) - yb) ** 2).mean()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 50 == 0:
            torch.cuda.synchronize()
    with torch.no_grad():
        out = net(x)[0, 0].float().cpu().numpy() * scale + low
    return psnr(out, clean, data_range=255), steps


def training(quick):
    """Every training figure of bench/gpu.json."""
    steps = 20 if quick else 300
    sizes = [(16, 64), (128, 128)] if not quick else [(4, 32), (8, 64)]
    rows, results = [], {}
    for batch, patch in sizes:
        torch_rates = torch_steps_per_s(batch, patch, steps)
        for algorithm in ("care", "n2v2"):
            ours, first = our_steps_per_s(algorithm, batch, patch, steps)
            row = {"algorithm": algorithm, "batch": batch, "patch": patch, "steps_per_s": ours,
                   "first_step_s": first, "torch": torch_rates}
            if torch_rates:
                row["over_torch_tf32"] = ours / torch_rates["tf32"]
                row["over_torch_best"] = ours / max(torch_rates.values())
            rows.append(row)
            print(row, flush=True)
    results["training"] = rows
    named = {(r["algorithm"], r["batch"], r["patch"]): r for r in rows}
    if not quick and rows[0].get("torch"):
        results["train_care_16x64_over_torch"] = named["care", 16, 64]["over_torch_tf32"]
        results["train_n2v2_16x64_over_torch"] = named["n2v2", 16, 64]["over_torch_tf32"]
        results["train_n2v2_128x128_over_torch"] = named["n2v2", 128, 128]["over_torch_tf32"]
    results["first_step_in_process_s"] = rows[0]["first_step_s"]
    with tempfile.TemporaryDirectory() as cache:
        results["first_step_s"] = first_step_in_a_new_process(Path(cache) / "xla")
    budget = 5 if quick else 30
    ours = our_psnr_after(budget, *sizes[-1])
    theirs = torch_psnr_after(budget, *sizes[-1])
    half = our_psnr_after(budget, *sizes[-1], precision="bfloat16")  # mixed precision: issue 25's item 6
    results["psnr_after_budget"] = {"seconds": budget, "ours_db": ours[0], "ours_steps": ours[1],
                                    "ours_bf16_db": half[0], "ours_bf16_steps": half[1],
                                    "torch_tf32_db": theirs[0] if theirs else None,
                                    "torch_steps": theirs[1] if theirs else None}
    rate, _ = our_steps_per_s("n2v2", *sizes[-1], steps, precision="bfloat16")
    results["train_n2v2_bf16_steps_per_s"] = {"size": list(sizes[-1]), "steps_per_s": rate,
                                              "over_float32": rate / named["n2v2", *sizes[-1]]["steps_per_s"]}
    print(results["psnr_after_budget"], results["train_n2v2_bf16_steps_per_s"], flush=True)
    return results


def markdown(results):
    lines = ["", "| training | steps/s | PyTorch fp32 / TF32 / bf16 | ours over TF32 | first step (s) |",
             "|---|---|---|---|---|"]
    for row in results["training"]:
        t = row["torch"]
        torch_text = f"{t['fp32']:.0f} / {t['tf32']:.0f} / {t['bf16']:.0f}" if t else "—"
        ratio = f"{row['over_torch_tf32']:.2f}x" if t else "—"
        lines.append(f"| {row['algorithm']} {row['batch']}x{row['patch']}² | {row['steps_per_s']:.1f} | {torch_text} "
                     f"| {ratio} | {row['first_step_s']:.1f} |")
    budget = results["psnr_after_budget"]
    theirs = f"{budget['torch_tf32_db']:.2f} dB ({budget['torch_steps']} steps)" if budget["torch_tf32_db"] else "—"
    lines += ["", f"First step in a new process (compile cache warm): {results['first_step_s']:.1f} s.",
              f"care on camera (sigma 25) after {budget['seconds']} s: ours {budget['ours_db']:.2f} dB "
              f"({budget['ours_steps']} steps), ours in mixed precision (bf16) {budget['ours_bf16_db']:.2f} dB "
              f"({budget['ours_bf16_steps']} steps), PyTorch TF32 {theirs}.",
              f"n2v2 {'x'.join(map(str, results['train_n2v2_bf16_steps_per_s']['size']))} in mixed precision: "
              f"{results['train_n2v2_bf16_steps_per_s']['steps_per_s']:.1f} steps/s, "
              f"{results['train_n2v2_bf16_steps_per_s']['over_float32']:.2f}x float32."]
    return "\n".join(lines) + "\n"
