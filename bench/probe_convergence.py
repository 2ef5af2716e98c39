"""Does the paper's linear probe converge? Seed spread vs a fully converged logistic regression.

    python bench/probe_convergence.py --model_dir runs/study/care [--model_dir ...]
    python bench/probe_convergence.py --quick     # tiny backbone and data, under a minute

For each backbone: extracts centre-crop pooled features of a labelled dataset
once, then trains the paper's probe head (docs/method.md) (Dense + BN, SGD momentum 0.9, lr
0.2 x batch / 256, cosine, 80 epochs) on them with several seeds, and fits a
multinomial logistic regression to convergence (scikit-learn L-BFGS on
standardised features, no augmentation either way). Both are affine
classifiers of the same features, so a converged probe would match the
logistic regression's training loss; a seed spread in test accuracy together
with training losses above it means the probe stops short of the optimum.
Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from care_tf.evaluate.__main__ import image_size_of, load_split  # noqa: E402
from care_tf.evaluate.features import extract_features  # noqa: E402
from care_tf.evaluate.linear import predict_scores, train_linear_probe_on_features  # noqa: E402
from care_tf.model_dir import load_backbone  # noqa: E402


def features_of(backbone, dataset: str, split: str, limit: int | None) -> tuple:
    """Centre-crop pooled features (N, D) float32 and labels (N,) of one split."""
    size = image_size_of(backbone, None)
    ds, _, _ = load_split(dataset, split, train=False, image_size=size, batch_size=256, limit=limit)
    return extract_features(backbone, ds)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy (nats) of logits (N, C) against int labels (N,)."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def logistic_regression(train_x, train_y, test_x, test_y, max_iter: int) -> dict:
    """Multinomial logistic regression (L-BFGS, L2 C=1 on standardised features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(C=1.0, max_iter=max_iter)
    start = time.time()
    clf.fit(scaler.transform(train_x), train_y)
    train_logits = clf.decision_function(scaler.transform(train_x))
    test_pred = clf.predict(scaler.transform(test_x))
    return {
        "train_loss": cross_entropy(train_logits, train_y),
        "test_top1": float((test_pred == test_y).mean()),
        "iterations": int(np.max(clf.n_iter_)),
        "seconds": round(time.time() - start, 1),
    }


def probe(train_x, train_y, test_x, test_y, *, epochs: int, seed: int) -> dict:
    """The paper's probe head (docs/method.md) on features; final train loss and test top-1."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    start = time.time()
    head, history = train_linear_probe_on_features(
        train_x, train_y, num_classes=num_classes, epochs=epochs, seed=seed
    )
    scores, labels = predict_scores(head, (test_x, test_y))
    train_scores, _ = predict_scores(head, (train_x, train_y))
    return {
        "seed": seed,
        "train_loss_last_epoch": float(history["loss"][-1]),
        "train_loss": cross_entropy(train_scores, train_y),
        "test_top1": float((scores.argmax(1) == labels).mean()),
        "seconds": round(time.time() - start, 1),
    }


def quick_model_dir(tmp: str) -> str:
    """A random-init ResNet-18 (base width 8, 32 px) saved as MODEL_DIR/backbone.keras."""
    import keras

    from care_tf import create_backbone
    from care_tf import model_dir as layout

    keras.utils.set_random_seed(0)
    backbone = create_backbone("resnet18", image_shape=(32, 32, 3), stem="cifar", base_channels=8)
    layout.save_backbone(backbone, os.path.join(tmp, "backbone.keras"))  # as training writes it
    return tmp


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", action="append", default=[], help="repeatable")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=80, help="probe epochs (the paper's 80)")
    p.add_argument("--limit", type=int, default=None, help="examples per split")
    p.add_argument("--max_iter", type=int, default=2000, help="L-BFGS iterations")
    p.add_argument("--quick", action="store_true", help="random ResNet-18/8, 2048 images")
    args = p.parse_args(argv)
    if args.quick:
        if not args.model_dir:
            args.model_dir = [quick_model_dir(tempfile.mkdtemp(prefix="probe_convergence_"))]
        args.limit = args.limit or 2048
        args.epochs = min(args.epochs, 5)
        args.seeds = args.seeds[:2]
    if not args.model_dir:
        p.error("give --model_dir (repeatable) or --quick")

    figures = {}
    for model_dir in args.model_dir:
        backbone = load_backbone(model_dir)
        train_x, train_y = features_of(backbone, args.dataset, "train", args.limit)
        test_x, test_y = features_of(backbone, args.dataset, "test", args.limit)
        runs = [
            probe(train_x, train_y, test_x, test_y, epochs=args.epochs, seed=s) for s in args.seeds
        ]
        lr = logistic_regression(train_x, train_y, test_x, test_y, args.max_iter)
        top1 = [r["test_top1"] for r in runs]
        figures[model_dir] = {
            "probe": runs,
            "probe_top1_mean": float(np.mean(top1)),
            "probe_top1_spread": float(max(top1) - min(top1)),
            "logistic_regression": lr,
        }
        losses = ", ".join(f"{r['train_loss']:.3f}" for r in runs)
        print(
            f"{model_dir}: probe top-1 {', '.join(f'{100 * t:.2f}' for t in top1)} "
            f"(train loss {losses}); "
            f"L-BFGS top-1 {100 * lr['test_top1']:.2f} (train loss {lr['train_loss']:.3f})",
            flush=True,
        )
    out = {"quick": args.quick, "epochs": args.epochs, "limit": args.limit, "models": figures}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
