"""Models: an MLP and the CIFAR-style ResNet family of He et al. 2016."""
