"""Task heads: one full-resolution head per task on the decoder's output, and the auxiliary head."""
import torch
from torch import nn

from mffseg_ros.model.decoder import LinkNetDecoderBlock
from mffseg_ros.model.layers import conv_bn_relu


class TaskHead(nn.Module):
    """Main-path head: 3x3/2 transposed conv 64->32, 3x3 conv 32->32, 2x2/2 transposed conv -> C."""

    def __init__(self, num_classes, cin=64, mid=32):
        super().__init__()
        self.up1 = nn.Sequential(nn.ConvTranspose2d(cin, mid, 3, 2, 1, output_padding=1, bias=False),
                                 nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.conv = conv_bn_relu(mid, mid, 3, 1, 1)
        self.classify = nn.ConvTranspose2d(mid, num_classes, 2, 2)

    def forward(self, x):
        return self.classify(self.conv(self.up1(x)))


class AuxHead(nn.Module):
    """Aux class map at 1/8: LinkNet decoder 512->128 summed with aux features, 3x3 conv 128->32, then a
    2x2/2 transposed conv per task (the shared part is computed once for all tasks)."""

    def __init__(self, tasks, cin=512, aux_ch=128, mid=32):
        super().__init__()
        self.decoder = LinkNetDecoderBlock(cin, aux_ch)
        self.conv = conv_bn_relu(aux_ch, mid, 3, 1, 1)
        self.classify = nn.ModuleList(nn.ConvTranspose2d(mid, c, 2, 2) for c in tasks.values())  # tasks order

    def forward(self, fused, aux_features):
        x = self.conv(self.decoder(fused) + aux_features)
        return torch.cat([head(x) for head in self.classify], dim=1)
