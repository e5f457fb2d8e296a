"""Run the real recipe on N virtual CPU devices and save the weights after chosen training steps.

`python tests/network/stepwise.py OUT.npz DEVICES DATA`: head epochs over images (the frozen base), then one
fine-tuning epoch, with every source of randomness that is not the data parallelism itself switched off (no
augmentation, dropout and stochastic depth at 0), so 1 device and 2 devices must take the same steps. The global
batch is 32 either way (1 x 32, 2 x 16), so the recipe's learning rates apply unscaled on both. Used by tests/network/test_distribute.py; a separate process because the virtual devices
must be set before TensorFlow starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SAVED_STEPS = {1, 2, 3, 10}  # in each phase: the first steps (a wrong reduction shows at once) and the last


def main(out: Path, devices: int, data: str) -> None:
    os.environ["STUDIO_CPU_DEVICES"] = str(devices)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np

    from core.base.config import TrainConfig
    from core.network import model as model_module
    from core.training import train

    build = model_module.build_classifier

    def without_dropout(*args, **kwargs):
        """The classifier with every Dropout at rate 0: the head's, and the base's stochastic depth, whose random
        masks differ between one device and two (per-replica random streams)."""
        classifier = build(*args, **kwargs)
        for layer in _layers(classifier):
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
        return classifier

    model_module.build_classifier = without_dropout
    saved: dict[str, np.ndarray] = {}
    initial: dict[str, dict[str, np.ndarray]] = {}
    logger_end = train.RunLogger.on_train_batch_end

    def on_train_begin(self, logs=None):
        initial[self.phase] = {w.path: np.array(w) for w in self.model.trainable_weights}

    def on_train_batch_end(self, batch, logs=None):
        logger_end(self, batch, logs)
        if batch + 1 not in SAVED_STEPS:
            return
        for weight in self.model.trainable_weights:
            replicas = [np.asarray(v) for v in getattr(weight, "values", [weight])]
            key = f"{self.phase}|{batch + 1}|{weight.path}"
            saved[key] = replicas[0] - initial[self.phase][weight.path]  # this phase's update so far
            saved[key + "|replica_spread"] = np.float64(max(np.abs(r - replicas[0]).max() for r in replicas))
        saved[f"{self.phase}|{batch + 1}|loss"] = np.float64(logs["loss"])

    train.RunLogger.on_train_begin = on_train_begin
    train.RunLogger.on_train_batch_end = on_train_batch_end
    config = TrainConfig(data=data, image_size=64, head_mode="images", head_epochs=1, finetune_epochs=1,
                         batch_size=32 // devices, head_lr=1e-3, finetune_lr=1e-4, dropout=0.0,
                         augmentation="none", seed=1)
    run = train.run_training(config, models_dir=out.parent / f"models-{devices}")
    np.savez(out, **saved)
    print(run.path)


def _layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _layers(layer)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
