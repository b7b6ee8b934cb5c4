"""LinkNet decoder: one block per encoder level, each block's output summed with that level's skip."""
from torch import nn

from mffseg_ros.model.layers import conv_bn_relu


class LinkNetDecoderBlock(nn.Module):
    """1x1 conv C->C/4, 3x3 transposed conv (x2 upsampling; a 3x3 conv when stride 1), 1x1 conv -> out."""

    def __init__(self, cin, cout, stride=2):
        super().__init__()
        mid = cin // 4
        self.reduce = conv_bn_relu(cin, mid, 1)
        if stride == 2:
            self.up = nn.Sequential(nn.ConvTranspose2d(mid, mid, 3, 2, 1, output_padding=1, bias=False),
                                    nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        else:
            self.up = conv_bn_relu(mid, mid, 3, 1, 1)
        self.expand = conv_bn_relu(mid, cout, 1)

    def forward(self, x):
        return self.expand(self.up(self.reduce(x)))


class LinkNetDecoder(nn.Module):
    """Blocks 512->256->128->64 (x2 each) and 64->64 (stride 1: the pooled stem is at layer1's 1/4)."""

    def __init__(self, channels=(512, 256, 128, 64, 64)):
        super().__init__()
        strides = [2] * (len(channels) - 2) + [1]
        self.blocks = nn.ModuleList(LinkNetDecoderBlock(cin, cout, s)
                                    for cin, cout, s in zip(channels[:-1], channels[1:], strides))

    def forward(self, x, skips):
        """`x`: the fused deepest features; `skips`: encoder features shallow to deep ([stem, layer1..3])."""
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(x) + skip
        return x
