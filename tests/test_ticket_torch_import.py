"""Import of original-PyTorch biprop checkpoints: same logits as the PyTorch model."""
import builtins
import math

import numpy as np
import pytest

from mpt_jax import ticket as T
from mpt_jax.ticket import torch_import

KEEP = 0.3


def _subnet_conv_class(torch):
    """The reference's SubnetConv: keep the n - floor((1-k) n) largest |scores|, alpha = mean
    |W| over the kept entries (this project's alpha), forward with alpha * sign(W) * mask; no
    biases."""
    nn, F = torch.nn, torch.nn.functional

    class SubnetConv(nn.Conv2d):
        def __init__(self, cin, cout, k, stride=1, padding=0):
            super().__init__(cin, cout, k, stride=stride, padding=padding, bias=False)
            self.scores = nn.Parameter(torch.empty_like(self.weight).uniform_(-1, 1))
            nn.init.kaiming_normal_(self.weight)

        def forward(self, x):
            n = self.scores.numel()
            kept = n - math.floor((1.0 - KEEP) * n)
            order = torch.sort(self.scores.abs().flatten(), descending=True, stable=True).indices
            mask = torch.zeros(n)
            mask[order[:kept]] = 1.0
            mask = mask.view_as(self.weight)
            alpha = (self.weight.abs() * mask).sum() / kept
            return F.conv2d(x, alpha * torch.sign(self.weight) * mask, stride=self.stride,
                            padding=self.padding)

    return SubnetConv


def _torch_conv2_binact(affine: bool, width: int = 8):
    """Conv2_BinAct of the reference (models/frankle.py) at a small width, with SubnetConv
    semantics: keep the n - floor((1-k) n) largest |scores|, alpha = mean |W| over the kept
    entries (this project's alpha), forward with alpha * sign(W) * mask; no biases."""
    torch = pytest.importorskip("torch", reason="torch not installed: " + torch_import.TORCH_HINT)
    nn = torch.nn
    SubnetConv = _subnet_conv_class(torch)

    class BinAct(nn.Module):
        def forward(self, x):
            return torch.where(x >= 0, 1.0, -1.0)

    def bn(c):
        return nn.BatchNorm2d(c, affine=affine)

    class Conv2BinAct(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.convs = nn.Sequential(SubnetConv(3, w, 3, padding=1), bn(w), BinAct(),
                                       SubnetConv(w, w, 3, padding=1), nn.MaxPool2d((2, 2)), bn(w),
                                       BinAct())
            self.flat = w * 8 * 8
            self.linear = nn.Sequential(SubnetConv(self.flat, 4 * w, 1), bn(4 * w), BinAct(),
                                        SubnetConv(4 * w, 4 * w, 1), bn(4 * w), BinAct(),
                                        SubnetConv(4 * w, 10, 1))

        def forward(self, x):
            out = self.convs(x)
            out = out.view(out.size(0), self.flat, 1, 1)
            return self.linear(out).squeeze()

    torch.manual_seed(0)
    net = Conv2BinAct()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)
    return torch, net.eval()


@pytest.mark.parametrize("affine", [False, True])
def test_conv2_binact_state_dict_gives_same_logits(affine, tmp_path):
    torch, net = _torch_conv2_binact(affine)
    path = tmp_path / "model_best.pth"
    # As saved by the reference: a dict with "state_dict", DataParallel "module." prefixes.
    sd = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save({"epoch": 3, "arch": "Conv2_BinAct", "state_dict": sd, "best_acc1": 12.5}, path)
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        ref = net(x).numpy()
    ticket = torch_import.ticket_from_torch(str(path), "conv2_binact", KEEP,
                                            model_opts=dict(width_mult=0.125),
                                            image_shape=(16, 16, 3))
    assert ticket.model_options["bn_affine"] is affine
    loaded = T.ticket_from_bytes(T.ticket_bytes(ticket))
    out = np.asarray(T.predict_fn(loaded)(x.numpy().transpose(0, 2, 3, 1)))  # NCHW -> NHWC
    assert np.abs(ref).max() > 0.1  # a non-trivial comparison
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_name,block,stem,stages", [
    ("resnet20_cifar", "basic", 16, ((16, 1, 3), (32, 2, 3), (64, 2, 3))),
    pytest.param("resnet50_cifar", "bottleneck", 64,
                 ((64, 1, 3), (128, 2, 4), (256, 2, 6), (512, 2, 3)), marks=pytest.mark.full_size),
])
def test_cifar_resnet_state_dict_gives_same_logits(model_name, block, stem, stages, tmp_path):
    """models/resnet_cifar.py naming: conv1, bn1, layer<s>.<b>.conv1/bn1/conv2/bn2(/conv3/bn3),
    shortcut.0/1, fc (a 1x1 SubnetConv); ReLU graph, non-affine BN, GAP head; BasicBlocks
    (ResNet-20) and the expansion-4 Bottlenecks of cResNet50."""
    torch = pytest.importorskip("torch", reason="torch not installed: " + torch_import.TORCH_HINT)
    nn, F = torch.nn, torch.nn.functional
    SubnetConv = _subnet_conv_class(torch)
    expansion = 4 if block == "bottleneck" else 1

    def bn(c):
        return nn.BatchNorm2d(c, affine=False)

    class Block(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            if block == "basic":
                self.conv1, self.bn1 = SubnetConv(cin, planes, 3, stride, 1), bn(planes)
                self.conv2, self.bn2 = SubnetConv(planes, planes, 3, 1, 1), bn(planes)
                self.convs = [(self.conv1, self.bn1), (self.conv2, self.bn2)]
            else:
                self.conv1, self.bn1 = SubnetConv(cin, planes, 1), bn(planes)
                self.conv2, self.bn2 = SubnetConv(planes, planes, 3, stride, 1), bn(planes)
                self.conv3, self.bn3 = SubnetConv(planes, 4 * planes, 1), bn(4 * planes)
                self.convs = [(self.conv1, self.bn1), (self.conv2, self.bn2),
                              (self.conv3, self.bn3)]
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != expansion * planes:
                self.shortcut = nn.Sequential(SubnetConv(cin, expansion * planes, 1, stride),
                                              bn(expansion * planes))

        def forward(self, x):
            out = x
            for i, (conv, norm) in enumerate(self.convs):
                out = norm(conv(out))
                if i < len(self.convs) - 1:
                    out = F.relu(out)
            return F.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = SubnetConv(3, stem, 3, 1, 1)
            self.bn1 = bn(stem)
            cin = stem
            for s, (planes, stride, n) in enumerate(stages, start=1):
                blocks = []
                for b in range(n):
                    blocks.append(Block(cin, planes, stride if b == 0 else 1))
                    cin = expansion * planes
                setattr(self, f"layer{s}", nn.Sequential(*blocks))
            self.fc = SubnetConv(cin, 10, 1)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            for s in range(1, len(stages) + 1):
                out = getattr(self, f"layer{s}")(out)
            out = F.adaptive_avg_pool2d(out, 1)
            return self.fc(out).flatten(1)

    torch.manual_seed(1)
    net = ResNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    path = tmp_path / f"{model_name}.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ref = net(x).numpy()
    ticket = torch_import.ticket_from_torch(str(path), model_name, KEEP, image_shape=(16, 16, 3))
    out = np.asarray(T.predict_fn(ticket)(x.numpy().transpose(0, 2, 3, 1)))
    assert np.abs(ref).max() > 0.1  # a non-trivial comparison
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_wrong_model_is_refused(tmp_path):
    torch, net = _torch_conv2_binact(False)
    path = tmp_path / "m.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(T.TicketError, match="wrong --model|expects"):
        torch_import.ticket_from_torch(str(path), "conv4_binact", KEEP,
                                       model_opts=dict(width_mult=0.125), image_shape=(16, 16, 3))
    with pytest.raises(T.TicketError, match="expects"):
        torch_import.ticket_from_torch(str(path), "conv2_binact", KEEP,
                                       model_opts=dict(width_mult=0.25), image_shape=(16, 16, 3))


def test_v2_models_are_refused_not_silently_misread():
    """A v2 block calls its shortcut BN before BN2 (same shapes as in the file, other order):
    import must refuse instead of swapping BatchNorm statistics."""
    sd = {"conv1.scores": np.zeros((4, 3, 3, 3), np.float32)}
    with pytest.raises(T.TicketError, match="v2 models.*not supported"):
        torch_import.convert_state_dict(sd, "resnet18_cifar_v2", KEEP)


def test_cli_import_torch(tmp_path, capsys):
    torch, net = _torch_conv2_binact(False)
    path = tmp_path / "m.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    out = tmp_path / "imported.mptk"
    rc = T.main(["ticket", "import-torch", f"--checkpoint={path}", "--model=conv2_binact",
                 f"--keep_fraction={KEEP}", '--model_options={"width_mult": 0.125}',
                 "--image_shape=16,16,3", f"--out={out}"])
    assert rc == 0, capsys.readouterr().err
    assert T.load_ticket(out).mode == "signs"


def test_missing_torch_gives_install_hint(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(T.TicketError, match=r"pip install torch==2\.13\.0"):
        torch_import.load_state_dict("whatever.pth")
