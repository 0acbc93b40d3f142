"""Training speed of the napari widget's job: on the main thread, on a worker
thread (as napari's thread_worker runs it), and in a child process watched from
a worker thread (what the widget does), side by side in alternating rounds.

    python bench/widget_training.py        # writes bench/widget_training.json

Each run trains the default n2v2 network (16 patches of 64 x 64 a step) for
``--steps`` steps with no previews; steps/s counts from the second step's
arrival to the last's, so start-up and compilation are left out.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
from skimage import data

from napari_flax_denoise.config import Config
from napari_flax_denoise.plugin.jobs import train_with_preview
from napari_flax_denoise.plugin.training_process import train_in_child

HERE = Path(__file__).resolve().parent


def steps_per_second(job, image, steps):
    """Drive ``job`` to its end; steps/s between the first and the last update."""
    arrivals = []
    run = job([image], axes="YX", config=Config(epochs=1, steps_per_epoch=steps, val_fraction=0.0))
    for _ in run:
        arrivals.append(time.perf_counter())
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def on_worker_thread(function, *args):
    """Run ``function(*args)`` on a new thread, as napari does, and return its result."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(value=function(*args)))
    thread.start()
    thread.join()
    return out["value"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    image = data.camera()[:256, :256].astype(np.float32)
    ways = {"main thread": lambda: steps_per_second(train_with_preview, image, args.steps),
            "worker thread": lambda: on_worker_thread(steps_per_second, train_with_preview, image, args.steps),
            "child process (the widget)": lambda: on_worker_thread(steps_per_second, train_in_child, image,
                                                                   args.steps)}
    rounds = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            rounds[name].append(way())
            print(f"{name}: {rounds[name][-1]:.2f} steps/s", flush=True)
    results = {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "steps_per_s": rounds,
               "child_over_worker": max(rounds["child process (the widget)"]) / max(rounds["worker thread"])}
    (HERE / "widget_training.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
