"""Our FGSM (clean + adversarial evaluation of a batch) against torchattacks and ART.

Result (2 CPU cores, VGG width 16, batch 500, --images 1000 --repeats 5): the same adversarial pixels as both;
in fp32 ours evaluates 1.30x as fast as torchattacks 3.5 and 1.64x as fast as ART 1.20 in the default layout,
1.80x and 2.28x in channels_last (the cpu preset's evaluation); bf16 1.99x torchattacks.

First checks that all three give the same adversarial images (equal to 1e-6 on at least 99.9% of
pixel values: a different kernel may only flip the sign of a near-zero gradient), then times the
whole evaluation: clean predictions, the attack, adversarial predictions.

    pip install adversarial-robustness-toolbox==1.20.* && pip install --no-deps torchattacks==3.5.1
    python benchmarks/bench_attack.py [--width 16] [--batch 500] [--images 2000]

(torchattacks 3.5 pins an old `requests`; --no-deps keeps the one MLflow needs.)
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from art.attacks.evasion import FastGradientMethod
from art.estimators.classification import PyTorchClassifier
from common import arguments, model, print_table, test_images, timed
from torch import nn

import torchattacks
from imbadv.core.attacks import fgsm_with_logits
from imbadv.config import AttackConfig
from imbadv.core.inference import set_layout, to_unit

EPS = 0.01  # section 3.2


def batches(x: torch.Tensor, y: torch.Tensor, size: int):
    for start in range(0, len(x), size):
        yield x[start:start + size], y[start:start + size]


def main() -> None:
    args = arguments(__doc__)
    images, labels = test_images(args)
    network = model(args.width)
    x, y = to_unit(torch.from_numpy(images)), torch.from_numpy(labels)
    config = AttackConfig(eps=EPS)

    nhwc_network = set_layout(copy.deepcopy(network), channels_last=True)

    def ours(precision: str = "fp32", net: nn.Module = network):
        out = []
        for xb, yb in batches(x, y, args.batch):
            adversarial, clean_logits = fgsm_with_logits(net, xb, yb, config, precision)
            with torch.inference_mode():
                out.append((clean_logits.argmax(1), net(adversarial).argmax(1), adversarial))
        return out

    attack = torchattacks.FGSM(network, eps=EPS)

    def with_torchattacks():
        out = []
        for xb, yb in batches(x, y, args.batch):
            with torch.inference_mode():
                clean = network(xb).argmax(1)
            adversarial = attack(xb, yb)
            with torch.inference_mode():
                out.append((clean, network(adversarial).argmax(1), adversarial))
        return out

    classifier = PyTorchClassifier(network, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                                   clip_values=(0.0, 1.0), device_type="cpu")
    art_attack = FastGradientMethod(classifier, norm=np.inf, eps=EPS, batch_size=args.batch)
    x_np, y_onehot = x.numpy(), np.eye(10, dtype=np.float32)[labels]

    def with_art():
        clean = classifier.predict(x_np, batch_size=args.batch).argmax(1)
        adversarial = art_attack.generate(x_np, y=y_onehot)
        return clean, classifier.predict(adversarial, batch_size=args.batch).argmax(1), adversarial

    reference = torch.cat([a for _, _, a in ours()]).numpy()
    for name, adversarial in (("torchattacks", torch.cat([a for _, _, a in with_torchattacks()]).numpy()),
                              ("ART", with_art()[2]),
                              ("imbadv channels_last", torch.cat([a for _, _, a in ours(net=nhwc_network)]).numpy())):
        share = float(np.mean(np.abs(adversarial - reference) <= 1e-6))
        print(f"same adversarial pixels as ours (1e-6): {name} {share:.6%}")
        if share < 0.999:
            raise SystemExit(f"{name} disagrees with ours on {1 - share:.3%} of pixels: not timed")

    seconds = timed({"imbadv fgsm (clean logits from the gradient pass)": ours,
                     "imbadv fgsm, channels_last (cpu preset)": lambda: ours(net=nhwc_network),
                     "imbadv fgsm, bf16 autocast": lambda: ours("bf16"),
                     "torchattacks 3.5 FGSM": with_torchattacks,
                     "ART FastGradientMethod": with_art}, args.repeats)
    print_table(f"FGSM eps={EPS} clean + adversarial evaluation, VGG width {args.width}, batch {args.batch}",
                len(x), seconds, "torchattacks 3.5 FGSM")
    for name, value in seconds.items():
        if name.startswith("imbadv"):
            print(f"{name} vs ART: {seconds['ART FastGradientMethod'] / value:.2f}x")


if __name__ == "__main__":
    main()
