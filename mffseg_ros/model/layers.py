"""The conv -> BatchNorm -> ReLU unit the fusion, decoder and heads are built from."""
from torch import nn


def conv_bn_relu(cin, cout, kernel, stride=1, padding=0, dilation=1, relu=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False),
              nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
