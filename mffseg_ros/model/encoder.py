"""ResNet-18 encoder with torchvision's parameter names (conv1, bn1, layer1..layer4, downsample.0/1), so
ImageNet weights from torchvision or timm load by name (model/pretrained.py)."""
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a 1x1 projection when the shape changes."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


def resnet_layer(cin, cout, stride, blocks=2):
    return nn.Sequential(BasicBlock(cin, cout, stride), *[BasicBlock(cout, cout) for _ in range(blocks - 1)])


class ResNet18Encoder(nn.Module):
    """7x7/2 stem + 3x3/2 max-pool, four layers of two basic blocks; no classifier.

    `forward(x, depth)` returns the feature list [pooled stem (1/4), layer1 (1/4), layer2 (1/8),
    layer3 (1/16), layer4 (1/32)] up to layer `depth` (smp's encoder contract, minus the input itself).
    """

    channels = (64, 64, 128, 256, 512)  # pooled stem, layer1..layer4

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = resnet_layer(64, 64, 1)
        self.layer2 = resnet_layer(64, 128, 2)
        self.layer3 = resnet_layer(128, 256, 2)
        self.layer4 = resnet_layer(256, 512, 2)

    def forward(self, x, depth=4):
        if not 0 <= depth <= 4:
            raise ValueError(f'encoder depth must be 0..4, got {depth}')
        features = [self.maxpool(self.relu(self.bn1(self.conv1(x))))]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[:depth]:
            features.append(layer(features[-1]))
        return features
