"""The converted ResNet computes what the authors' PyTorch ResNet computes.

A NumPy forward pass written here from PyTorch's semantics (NCHW, OIHW weights, symmetric
zero padding, max-pool padded with -inf, BatchNorm in inference mode, Linear y = x W^T + b)
runs on the checkpoint's own tensors; the converted Keras classifier must agree to 1e-5
relative. (tests/test_convert_torch.py does the same against real PyTorch where installed.)
"""

import numpy as np
from torch_checkpoint import authors_keys, write_linear_checkpoint

from care_tf.convert.converter import convert_linear, read_state_dict

EPS = 1e-5


def conv2d(x, w, stride, pad):
    """x (B, C, H, W), w (O, C, kh, kw) -> (B, O, H', W'), zero padding `pad` on each side."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, _, kh, kw = w.shape
    h = (x.shape[2] - kh) // stride + 1
    wd = (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], h, wd), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + stride * h : stride, j : j + stride * wd : stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


def batch_norm(x, s, p):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = s[f"{p}.weight"] / np.sqrt(s[f"{p}.running_var"] + EPS)
    return (x - s[f"{p}.running_mean"].reshape(shape)) * scale.reshape(shape) + s[
        f"{p}.bias"
    ].reshape(shape)


def max_pool_3x3_s2_p1(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    h = (x.shape[2] - 3) // 2 + 1
    w = (x.shape[3] - 3) // 2 + 1
    windows = [x[:, :, i : i + 2 * h : 2, j : j + 2 * w : 2] for i in range(3) for j in range(3)]
    return np.max(windows, axis=0)


def relu(x):
    return np.maximum(x, 0)


def resnet18_features(s, x, p="module.encoder."):
    """torchvision ResNet-18 (BasicBlock) up to the global average pool."""
    x = relu(batch_norm(conv2d(x, s[f"{p}conv1.weight"], 2, 3), s, f"{p}bn1"))
    x = max_pool_3x3_s2_p1(x)
    for stage in range(1, 5):
        for block in range(2):
            b = f"{p}layer{stage}.{block}."
            stride = 2 if stage > 1 and block == 0 else 1
            shortcut = x
            if f"{b}downsample.0.weight" in s:
                shortcut = conv2d(x, s[f"{b}downsample.0.weight"], stride, 0)
                shortcut = batch_norm(shortcut, s, f"{b}downsample.1")
            y = relu(batch_norm(conv2d(x, s[f"{b}conv1.weight"], stride, 1), s, f"{b}bn1"))
            y = batch_norm(conv2d(y, s[f"{b}conv2.weight"], 1, 1), s, f"{b}bn2")
            x = relu(y + shortcut)
    return x.mean(axis=(2, 3))


def relative(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_converted_resnet18_and_head_match_a_numpy_pytorch_forward(tmp_path):
    keys = authors_keys("linear", depth=18, base=8, num_classes=10)
    path = str(tmp_path / "linear.pth")
    state = write_linear_checkpoint(path, keys)
    classifier, _ = convert_linear(read_state_dict(path), 64)
    state = {k: v.astype(np.float64) for k, v in state.items()}

    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64))
    features = resnet18_features(state, x)
    logits = features @ state["module.classifier.0.weight"].T + state["module.classifier.0.bias"]
    logits = batch_norm(logits, state, "module.classifier.1")

    nhwc = x.transpose(0, 2, 3, 1).astype(np.float32)
    pooled = np.asarray(classifier.backbone(nhwc, training=False)["pooled"])
    assert relative(pooled, features) < 1e-5
    assert relative(np.asarray(classifier(nhwc, training=False)), logits) < 1e-5


def bot_attention(x, to_qkv, pos_h, pos_w, heads):
    """BoTNet MHSA (the authors' Attention with AbsPosEmb) on NCHW x."""
    b, _, h, w = x.shape
    q, k, v = np.split(conv2d(x, to_qkv, 1, 0), 3, axis=1)
    dim = q.shape[1] // heads

    def split(t):  # 'b (h d) x y -> b h (x y) d'
        return t.reshape(b, heads, dim, h * w).transpose(0, 1, 3, 2)

    q, k, v = split(q) * dim**-0.5, split(k), split(v)
    emb = (pos_h[:, None, :] + pos_w[None, :, :]).reshape(h * w, dim)
    sim = q @ k.transpose(0, 1, 3, 2) + q @ emb.T
    attn = np.exp(sim - sim.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    return (attn @ v).transpose(0, 1, 3, 2).reshape(b, heads * dim, h, w)


def bottle_stack(s, x, blocks, heads, p="trans."):
    """The authors' BottleStack: block 0 downsamples (stride-2 3x3 shortcut, 2x2 avg-pool)."""
    for k in range(blocks):
        b = f"{p}net.{k}."
        shortcut = x
        if k == 0:
            shortcut = relu(
                batch_norm(conv2d(x, s[f"{b}shortcut.0.weight"], 2, 1), s, f"{b}shortcut.1")
            )
        y = relu(batch_norm(conv2d(x, s[f"{b}net.0.weight"], 1, 0), s, f"{b}net.1"))
        y = bot_attention(
            y,
            s[f"{b}net.3.to_qkv.weight"],
            s[f"{b}net.3.pos_emb.height"],
            s[f"{b}net.3.pos_emb.width"],
            heads,
        )
        if k == 0:
            n, c, h, w = y.shape
            y = y.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        y = relu(batch_norm(y, s, f"{b}net.5"))
        y = batch_norm(conv2d(y, s[f"{b}net.7.weight"], 1, 0), s, f"{b}net.8")
        x = relu(y + shortcut)
    return x


def test_converted_transstack_matches_a_numpy_botnet_forward():
    from torch_checkpoint import random_state_dict, trans_keys

    from care_tf.convert import mapping
    from care_tf.models.transformer import TransStack

    keys = trans_keys("trans.", in_ch=16, out=32, blocks=3, fmap=4, heads=2)
    state = random_state_dict(keys)
    for key in state:  # sharp attention and a strong residual branch, so the q/k/v
        if ".net.3." in key or key.endswith(".net.8.weight"):  # split and positions matter
            state[key] = state[key] * 10
    stack = TransStack(out_channels=32, num_blocks=3, num_heads=2)
    stack.build((None, 4, 4, 16))
    plan = mapping.transformer_assignments("trans.", stack)
    shapes = {k: v.shape for k, v in state.items()}
    mapping.check_plan(plan, shapes, stack.weights, "test")
    mapping.apply_plan(plan, state.__getitem__)

    x = np.random.default_rng(0).normal(size=(2, 16, 4, 4))
    expected = bottle_stack({k: v.astype(np.float64) for k, v in state.items()}, x, 3, 2)
    ours = np.asarray(stack(x.transpose(0, 2, 3, 1).astype(np.float32), training=False))
    assert ours.shape == (2, 2, 2, 32)
    assert relative(ours, expected.transpose(0, 2, 3, 1)) < 1e-5
