"""FCN discriminator for the adversarial loss (Islam et al.): five 4x4/2 convs, LeakyReLU 0.2, no BN."""
import torch.nn.functional as F
from torch import nn


class Discriminator(nn.Module):
    """Input: class probabilities (softmax of a prediction, or one-hot ground truth), (B, C, H, W).
    Output: per-pixel real/fake logits (no sigmoid) bilinearly upsampled to H x W."""

    def __init__(self, in_channels, widths=(64, 128, 256, 512)):
        super().__init__()
        layers, cin = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(cin, w, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = w
        layers.append(nn.Conv2d(cin, 1, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return F.interpolate(self.net(x), size=x.shape[-2:], mode='bilinear', align_corners=False)
