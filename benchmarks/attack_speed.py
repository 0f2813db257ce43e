"""imbadv's PGD against torchattacks' PGD: the same model, images, start and settings, timed side by side.

Results: benchmarks/README.md, attack_speed.py.

First checks that both give the same adversarial images from the same random start (equal to 1e-6 on at
least 99.9% of pixel values: the projections round differently in the last bit, which may flip the sign of
a near-zero gradient), then times the attack alone, batch by batch, as the evaluation job runs it.

    pip install --no-deps torchattacks==3.5.1
    python benchmarks/attack_speed.py [--width 16] [--batch 250] [--images 500] [--repeats 3]

(torchattacks 3.5 pins an old `requests`; --no-deps keeps the one MLflow needs.)
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from common import arguments, model, print_table, test_images, timed

import torchattacks
from imbadv.config import AttackConfig
from imbadv.core.attacks import pgd
from imbadv.core.inference import set_layout, to_unit

# the example: --attack pgd --steps 20 --step-size 0.0025 --restarts 1, at the paper's eps
EPS, STEPS, STEP_SIZE, SEED = 0.01, 20, 0.0025, 0


def main() -> None:
    args = arguments(__doc__, batch=250, images=500)
    images, labels = test_images(args)
    network = model(args.width)
    x, y = to_unit(torch.from_numpy(images)), torch.from_numpy(labels)
    config = AttackConfig(attack="pgd", eps=EPS, steps=STEPS, step_size=STEP_SIZE, attack_seed=SEED)
    nhwc_network = set_layout(copy.deepcopy(network), channels_last=True)
    theirs = torchattacks.PGD(network, eps=EPS, alpha=STEP_SIZE, steps=STEPS, random_start=True)

    def ours(net: torch.nn.Module = network) -> torch.Tensor:
        return torch.cat([pgd(net, x[s:s + args.batch], y[s:s + args.batch], config)
                          for s in range(0, len(x), args.batch)])

    def with_torchattacks() -> torch.Tensor:
        out = []
        for s in range(0, len(x), args.batch):
            torch.manual_seed(SEED)  # each batch from the start ours draws for it
            out.append(theirs(x[s:s + args.batch], y[s:s + args.batch]))
        return torch.cat(out)

    reference = ours().numpy()
    share = float(np.mean(np.abs(with_torchattacks().numpy() - reference) <= 1e-6))
    print(f"same adversarial pixels as ours (1e-6): torchattacks {share:.6%}")
    if share < 0.999:
        raise SystemExit(f"torchattacks disagrees with ours on {1 - share:.3%} of pixels: not timed")
    # channels_last convolutions round differently: over 20 steps a few near-zero gradients change sign
    share = float(np.mean(np.abs(ours(nhwc_network).numpy() - reference) <= 1e-6))
    print(f"same adversarial pixels as ours (1e-6): imbadv channels_last {share:.6%}")

    seconds = timed({"imbadv pgd": ours,
                     "imbadv pgd, channels_last (cpu preset)": lambda: ours(nhwc_network),
                     "torchattacks 3.5 PGD": with_torchattacks}, args.repeats)
    print_table(f"PGD eps={EPS} steps={STEPS} step={STEP_SIZE} restarts=1, VGG width {args.width}, "
                f"batch {args.batch}", len(x), seconds, "torchattacks 3.5 PGD")
    print("\n" + " | ".join(f"{name}: {value:.2f} s" for name, value in seconds.items()))


if __name__ == "__main__":
    main()
