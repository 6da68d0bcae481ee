"""Rebuild the demo's bundled models and data in ``zeroskip/data/`` (torch, the ``examples`` extra).

The data is scikit-learn's bundled copy of the UCI optical handwritten digits (8×8 images, pixel
values 0–16, 1 797 samples; it ships inside scikit-learn, nothing is downloaded). Two networks are
trained in torch on three quarters of it:

- ``digits_mlp``: 64 → 256 → 128 → 10, ReLU;
- ``digits_cnn``: conv 3×3 (16) → conv 3×3 stride 2 (32) → conv 3×3 (64), each with BatchNorm and
  ReLU, then Flatten and a linear layer 1024 → 10.

Each is then pruned **gradually with fine-tuning**, as the compression guides describe it: over
``PRUNE_STEPS`` steps the sparsity follows ``zeroskip.compress.schedule.polynomial`` (Zhu & Gupta)
from 0 to ``SPARSITY``; at each step ``zeroskip.compress.masks`` chooses the weights to zero (global
magnitude over the hidden layers), and a few epochs of training follow with the masks re-applied
after every optimizer step. Both the float and the pruned network are exported to ONNX
(``torch.onnx.export``), imported with ``zeroskip.import_onnx``, and quantized with zeroskip's own
``zeroskip.quantize`` (min-max calibration on training images, uint8 activations, per-channel int8
weights). Eight files come out, four per network:

    digits_{mlp,cnn}.zsk              float
    digits_{mlp,cnn}_pruned.zsk       pruned to SPARSITY and fine-tuned, float
    digits_{mlp,cnn}_int8.zsk         the float model quantized
    digits_{mlp,cnn}_pruned_int8.zsk  the pruned model quantized

and ``digits_test.npz``: the held-out test images and labels, and a calibration set of training
images (the demo re-runs the pruning and quantization stages live on them).

    pip install '.[examples]'
    python examples/make_demo_models.py [--out zeroskip/data]

The models' input is the image scaled to [0, 1], ``pixels / 16`` as float32: (batch, 64) for the
MLP, (batch, 1, 8, 8) for the CNN.
"""

from __future__ import annotations

import argparse
import io
import os
from collections import OrderedDict

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import zeroskip
from zeroskip.compress import masks as choose_masks
from zeroskip.compress.schedule import polynomial

SEED = 0
SPARSITY = 0.9
PRUNE_STEPS = 8
EPOCHS = {"mlp": 60, "cnn": 40}
FINETUNE_EPOCHS = 4  # after each pruning step
FINAL_EPOCHS = 10    # after the last step
CALIBRATION = 256    # training images kept for calibration


def mlp() -> nn.Module:
    return nn.Sequential(OrderedDict(fc1=nn.Linear(64, 256), relu1=nn.ReLU(),
                                     fc2=nn.Linear(256, 128), relu2=nn.ReLU(),
                                     fc3=nn.Linear(128, 10)))


def cnn() -> nn.Module:
    layers = OrderedDict()
    for i, (c_in, c_out, stride) in enumerate(((1, 16, 1), (16, 32, 2), (32, 64, 1)), 1):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
        layers[f"relu{i}"] = nn.ReLU()
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(64 * 4 * 4, 10)
    return nn.Sequential(layers)


KEEP_DENSE = {"mlp": ("fc3",), "cnn": ("conv1",)}
"""Layers left dense: the MLP's output layer (1 280 weights) and the CNN's first conv (144)."""


def prunable(net: nn.Module) -> dict:
    """The weights pruned: every Linear and Conv weight but those of ``KEEP_DENSE``."""
    kind = "mlp" if hasattr(net, "fc1") else "cnn"
    return {name: m.weight for name, m in net.named_children()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and name not in KEEP_DENSE[kind]}


def train(net, x, y, epochs, masks=None, lr=2e-3):
    """Adam on cross-entropy, batches of 64; with ``masks``, pruned weights are held at zero."""
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 64):
            idx = order[start:start + 64]
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
            if masks:
                apply(net, masks)
    net.eval()


def apply(net, masks):
    with torch.no_grad():
        for name, w in prunable(net).items():
            w.mul_(torch.from_numpy(masks[name]).to(w.dtype))


def accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def prune_gradually(net, x, y):
    schedule = polynomial(0.0, SPARSITY, PRUNE_STEPS)
    masks = None
    for step, sparsity in enumerate(schedule[1:], 1):
        weights = {name: w.detach().numpy() for name, w in prunable(net).items()}
        masks = choose_masks(weights, sparsity, scope="global")
        apply(net, masks)
        train(net, x, y, FINETUNE_EPOCHS if step < PRUNE_STEPS else FINAL_EPOCHS, masks, lr=1e-3)
        print(f"  step {step}: sparsity {sparsity:.3f}, train accuracy {accuracy(net, x, y):.4f}")
    return net


def export(net, example, input_name, name) -> zeroskip.Model:
    """The network through ONNX (as a user's exported file would come) into zeroskip's IR."""
    buffer = io.BytesIO()
    torch.onnx.export(net, (example,), buffer, input_names=[input_name], output_names=["logits"],
                      dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    model = zeroskip.import_onnx(buffer.getvalue())
    model.metadata["source"].update(name=name, dataset="sklearn digits (UCI), 8x8, /16")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "zeroskip",
                                                      "data"))
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(2)

    digits = load_digits()
    pixels, labels = digits.data.astype(np.uint8), digits.target.astype(np.int64)
    p_train, p_test, y_train, y_test = train_test_split(
        pixels, labels, test_size=0.25, random_state=SEED, stratify=labels)
    calib = p_train[np.random.default_rng(SEED).permutation(len(p_train))[:CALIBRATION]]
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "digits_test.npz"), pixels=p_test.reshape(-1, 8, 8),
                        labels=y_test, calibration=calib.reshape(-1, 8, 8))

    for kind, make, shape, input_name in (("mlp", mlp, (-1, 64), "input"),
                                          ("cnn", cnn, (-1, 1, 8, 8), "image")):
        x_tr = torch.from_numpy((p_train / 16.0).astype(np.float32).reshape(shape))
        x_te = torch.from_numpy((p_test / 16.0).astype(np.float32).reshape(shape))
        y_tr, y_te = torch.from_numpy(y_train), torch.from_numpy(y_test)
        x_cal = (calib / 16.0).astype(np.float32).reshape(shape)
        net = make()
        train(net, x_tr, y_tr, EPOCHS[kind])
        print(f"digits_{kind}: float test accuracy {accuracy(net, x_te, y_te):.4f}")
        models = {f"digits_{kind}": export(net, x_te[:1], input_name, f"digits_{kind}")}
        prune_gradually(net, x_tr, y_tr)
        print(f"digits_{kind}: pruned test accuracy {accuracy(net, x_te, y_te):.4f}")
        models[f"digits_{kind}_pruned"] = export(net, x_te[:1], input_name,
                                                 f"digits_{kind}_pruned")
        models[f"digits_{kind}_pruned"].metadata["source"]["pruning"] = (
            f"gradual: polynomial schedule 0 -> {SPARSITY} over {PRUNE_STEPS} steps, global "
            f"magnitude, {FINETUNE_EPOCHS} epochs of fine-tuning per step")
        for base in list(models):
            q = zeroskip.quantize(models[base], {input_name: x_cal}, progress=False)
            q.metadata["source"]["name"] = f"{base}_int8"
            models[f"{base}_int8"] = q
        for name, model in models.items():
            zeroskip.save(model, os.path.join(args.out, f"{name}.zsk"))
            session = zeroskip.Session(model, "auto")
            logits = session.run({input_name: x_te.numpy()})["logits"]
            print(f"  {name}: zeroskip accuracy {(logits.argmax(1) == y_test).mean():.4f}, "
                  f"{os.path.getsize(os.path.join(args.out, name + '.zsk'))} bytes")


if __name__ == "__main__":
    main()
