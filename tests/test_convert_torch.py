"""Against real PyTorch (runs only where torch is installed): a file written by `torch.save`
converts into a backbone and classifier whose outputs match PyTorch's to 1e-5 relative.

The PyTorch model is a small ResNet-18 written here from the architecture (torchvision
layout, v1.5 strides; the authors' linear-evaluation wrapper: encoder + Linear + BatchNorm1d).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.slow
BASE, CLASSES, SIZE = 8, 10, 64


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + shortcut)


class Encoder(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = base
        for stage in range(4):
            planes = base * 2**stage
            blocks = [BasicBlock(cin, planes, 2 if stage else 1), BasicBlock(planes, planes, 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            cin = planes
        self.fc = nn.Sequential(nn.Linear(cin, 128))  # unused by the classifier

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
        return x.mean(dim=(2, 3))


class WithLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder(BASE)
        self.classifier = nn.Sequential(nn.Linear(8 * BASE, CLASSES), nn.BatchNorm1d(CLASSES))

    def forward(self, x):
        return self.classifier(self.encoder(x))


def _randomise_batch_norm(model):
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.5
            module.bias.data = torch.randn(n, generator=generator) * 0.1
            module.running_mean = torch.randn(n, generator=generator) * 0.1
            module.running_var = torch.rand(n, generator=generator) + 0.5


def _relative(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_torch_saved_resnet_matches_pytorch_outputs(tmp_path):
    import keras

    from care_tf.convert import convert_checkpoint

    torch.manual_seed(0)
    model = WithLinear()
    _randomise_batch_norm(model)
    model.eval()
    path = tmp_path / "linear.pth"
    torch.save({"epoch": 90, "classifier": model.state_dict()}, path)

    out = tmp_path / "run"
    convert_checkpoint(str(path), str(out), image_size=SIZE, log=lambda _: None)
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        features = model.encoder(torch.from_numpy(x)).numpy()
        logits = model(torch.from_numpy(x)).numpy()
    nhwc = x.transpose(0, 2, 3, 1)
    backbone = keras.saving.load_model(out / "backbone.keras", compile=False)
    classifier = keras.saving.load_model(out / "classifier.keras", compile=False)
    pooled = np.asarray(backbone(nhwc, training=False))
    assert _relative(pooled, features) < 1e-5
    assert _relative(np.asarray(classifier(nhwc, training=False)), logits) < 1e-5
