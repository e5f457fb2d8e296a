"""The network and where it runs: EfficientNet-Lite built in Keras with converted weights (lite0), the classifier
around a backbone (model), the exact head fit on frozen features (headfit), devices and precision (device), and
data parallelism (distribute)."""
