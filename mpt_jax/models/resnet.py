"""CIFAR, ImageNet and wide ResNets (SPEC 5.4-5.8). To be written."""
