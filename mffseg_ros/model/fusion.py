"""Multi-resolution feature fusion (MFF): the summing SPP on the main branch's deepest features, fused at
1/32 with the auxiliary (half-resolution input) branch's layer2 features."""
import torch.nn.functional as F
from torch import nn

from mffseg_ros.model.layers import conv_bn_relu

SPP_BINS = (16, 8, 4, 2)


class SumSPP(nn.Module):
    """Parameter-free spatial pyramid pooling that sums the upsampled pools with its input.

    Each level averages over a kernel of (size // bins) per side, so a map gets about `bins` cells per
    side whatever its size; kernels are plain ints, which keeps ONNX export and CUDA graphs static.
    """

    def __init__(self, bins=SPP_BINS):
        super().__init__()
        self.bins = tuple(bins)

    def forward(self, x):
        h, w = x.shape[-2:]
        out = x
        for n in self.bins:
            kernel = (max(1, h // n), max(1, w // n))
            pooled = F.avg_pool2d(x, kernel, kernel)
            out = out + F.interpolate(pooled, size=(h, w), mode='bilinear', align_corners=False)
        return out


class MFFFusion(nn.Module):
    """Fuses aux features (128 ch, 1/16) and SPP'd main features (512 ch, 1/32) at 1/32."""

    def __init__(self, aux_ch=128, main_ch=512, out_ch=512):
        super().__init__()
        self.spp = SumSPP()
        self.aux_proj = conv_bn_relu(aux_ch, out_ch, 1, stride=2, relu=False)
        self.main_proj = conv_bn_relu(main_ch, out_ch, 3, padding=2, dilation=2, relu=False)

    def forward(self, aux, main):
        return F.relu(self.aux_proj(aux) + self.main_proj(self.spp(main)), inplace=True)
