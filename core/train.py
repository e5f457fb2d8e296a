"""The training recipe, top to bottom, and the trainer process that writes one run directory.

Recipe (keras.io "fine-tuning with EfficientNet"): a pretrained base, frozen; a new head trained at a high
rate; then the top stages unfrozen with BatchNorm kept frozen, at a ~100x lower rate. Early stopping with
the best weights restored, ReduceLROnPlateau, optional class weights and label smoothing.
"""

from __future__ import annotations

import os
import platform
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core import StudioError
from core.config import TrainConfig
from core.datasets import Dataset, Sample, scan, split_samples, split_to_json
from core.distribute import data_parallel, prepare_devices
from core.runs import MODEL, RunDir

PHASE_HEAD, PHASE_FINETUNE = "head", "finetune"


@dataclass
class PreparedData:
    """The decoded split: uint8 caches and labels for each part."""

    root: Path
    classes: list[str]
    split: dict[str, list[Sample]]
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


def prepare_dataset(config: TrainConfig) -> tuple[Dataset, dict[str, list[Sample]]]:
    """Scan and split, refusing data that cannot be trained on (before any run folder exists)."""
    dataset = scan(config.data)
    if not dataset.report.trainable:
        raise StudioError(" ".join(dataset.report.errors))
    split = split_samples(dataset, config.val_fraction, config.test_fraction, config.seed)
    if not split["val"]:
        raise StudioError(f"{dataset.root}: no image could be held out for validation; "
                          "each class needs at least 2 images.")
    return dataset, split


def class_weight_vector(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights, normalised so a balanced dataset gets all ones."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


def library_versions() -> dict[str, str]:
    """Versions saved in config.json, so a run can be reproduced."""
    import albumentations
    import cv2
    import keras

    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "backend": keras.backend.backend(), "albumentations": albumentations.__version__,
                "opencv": cv2.__version__, "numpy": np.__version__}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    elif keras.backend.backend() == "jax":
        import jax

        versions["jax"] = jax.__version__
    return versions


class Trainer:
    """Runs the recipe for one config and writes everything into one run directory."""

    def __init__(self, config: TrainConfig, run: RunDir):
        self.config, self.run = config, run
        self.stop_signalled = False
        self.best_val_loss = float("inf")
        self.unsaved_best = False
        self.save_each_improvement = True
        self.global_epoch = 0
        self.plan: dict[str, int] = {}

    # ----------------------------------------------------------------------------- entry point
    def fit(self, dataset: Dataset, split: dict[str, list[Sample]]) -> dict[str, Any]:
        from core.augment import build_pipeline, resolve_spec
        from core.backbones import create_backbone
        from core.device import detect_device, precision_policy, use_xla
        from core.model import build_classifier, with_mid_level_features

        config = self.config
        prepare_devices()
        keras.utils.set_random_seed(config.seed)
        device = detect_device()
        policy = precision_policy(config.mixed_precision, device)
        keras.config.set_dtype_policy(policy)
        self.jit = use_xla(config.xla, device)
        self.parallel = data_parallel(config.data_parallel)
        replicas = self.parallel.replicas
        # batch_size is per device; the linear scaling rule keeps the per-example step size the same.
        self.global_batch = config.batch_size * replicas
        self.lr_scale = float(replicas)
        spec = resolve_spec(config.augmentation)
        size = config.resolved_image_size
        self.run.write_classes(dataset.classes)
        self.run.write_split(split_to_json(dataset.root, dataset.classes, split, config.seed,
                                           "folders" if dataset.report.layout == "split_folders" else "random"))
        self.run.write_config({**config.to_dict(), "augmentation": spec,
                               "resolved": {"image_size": size, "classes": dataset.classes,
                                            "finetune_epochs": config.resolved_finetune_epochs(device.accelerator),
                                            "device": device.to_dict(), "precision": policy, "xla": self.jit,
                                            "parallel": {"kind": self.parallel.kind, "replicas": replicas,
                                                         "devices": self.parallel.devices,
                                                         "per_device_batch": config.batch_size,
                                                         "global_batch": self.global_batch,
                                                         "learning_rate_scale": self.lr_scale},
                                            "counts": {k: len(v) for k, v in split.items()}},
                               "versions": library_versions()})
        self.run.set_status("running", pid=os.getpid(), phase="loading", message="Decoding images")
        data = self._decode(dataset, split, size)
        self.augment = build_pipeline(spec, seed=config.seed) if spec else None
        self.sample_weights = class_weight_vector(data.labels["train"], len(dataset.classes)) \
            if config.class_weights else None
        finetune_epochs = config.resolved_finetune_epochs(device.accelerator)
        self.plan = {PHASE_HEAD: config.head_epochs, PHASE_FINETUNE: finetune_epochs}
        with self.parallel.context():  # variables, optimizers and steps live on every replica
            base = create_backbone(config.backbone, size, config.weights)
            if config.multi_level:
                base = with_mid_level_features(base)
            self.model = build_classifier(base, len(dataset.classes), config.dropout)
            try:
                if config.head_epochs > 0:
                    self._train_head(data)
                if finetune_epochs > 0 and not self._stop_now():
                    self._finetune(data, finetune_epochs)
            except StopTraining:  # stopped while computing features: the head keeps its initial weights
                pass
            if not self.run.has_model():  # stopped before any validation: keep what there is
                self._save_model(self.model)
        return self._final_evaluation(data)

    # ----------------------------------------------------------------------------- data
    def _decode(self, dataset: Dataset, split: dict[str, list[Sample]], size: int) -> PreparedData:
        from core.loader import decode_cache

        images, labels = {}, {}
        total = sum(len(v) for v in split.values())
        done_before = 0
        for part in ("train", "val", "test"):
            samples = split[part]
            paths = [dataset.root / s.path for s in samples]

            def progress(done: int, _: int, offset: int = done_before) -> None:
                self.run.heartbeat(phase="loading", message=f"Decoding images {offset + done}/{total}")

            images[part] = decode_cache(paths, size, self.config.threads, progress)
            labels[part] = np.asarray([s.label for s in samples], dtype=np.int64)
            done_before += len(samples)
        return PreparedData(dataset.root, dataset.classes, split, images, labels)

    def _batches(self, data: PreparedData, part: str, augment: bool, shuffle: bool):
        from core.loader import ImageBatches

        return ImageBatches(data.images[part], data.labels[part], len(data.classes), self.global_batch,
                            augment=self.augment if augment else None, shuffle=shuffle,
                            seed=self.config.seed + self.global_epoch, threads=self.config.threads,
                            class_weights=self.sample_weights if part == "train" else None)

    # ----------------------------------------------------------------------------- phases
    def _compile(self, model, learning_rate: float) -> None:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate * self.lr_scale),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=self.config.label_smoothing),
                      metrics=["accuracy"], jit_compile=self.jit)

    def _train_head(self, data: PreparedData) -> None:
        """Phase 1: the base frozen; only the new head learns, at a high rate."""
        from core.model import base_of, feature_extractor

        base_of(self.model).trainable = False
        if self.config.head_mode == "features":
            # The frozen base gives the same features every epoch, so compute them once and fit the head on the
            # vectors exactly (core.headfit): seconds instead of epochs, and measured better than Adam with early
            # stopping. Mirrored training copies were measured to add nothing to this fit, so they are skipped.
            self.run.heartbeat(phase=PHASE_HEAD, message="Computing frozen-base features")
            extract = feature_extractor(self.model)
            start = time.perf_counter()
            train_x = self._features(extract, data.images["train"])
            val_x = self._features(extract, data.images["val"]) if len(data.images["val"]) else None
            elapsed = time.perf_counter() - start
            n_images = len(data.images["train"]) + len(data.images["val"])
            self.run.log_metrics({"kind": "features", "phase": PHASE_HEAD, "images": n_images,
                                  "seconds": elapsed, "images_per_s": n_images / max(elapsed, 1e-9)})
            self._fit_head_on_features(train_x, data.labels["train"], val_x, data.labels["val"], len(data.classes))
        else:
            self._compile(self.model, self.config.head_lr)
            self._fit(self.model, PHASE_HEAD, self.config.head_epochs,
                      x=self._batches(data, "train", augment=True, shuffle=True),
                      validation_data=self._batches(data, "val", augment=False, shuffle=False),
                      images_per_step=self.global_batch)

    def _fit_head_on_features(self, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None,
                              val_y: np.ndarray, num_classes: int) -> None:
        """Fit the head for each L2 strength of the grid (logged like epochs), write the best into the model."""
        from core.headfit import fit_head
        from core.model import write_linear_head

        bn = self.model.get_layer("head_bn")
        started = time.perf_counter()

        def log_trial(trial, index: int, total: int) -> bool:
            self.global_epoch += 1
            now = time.perf_counter()
            self.run.log_metrics({"kind": "epoch", "phase": PHASE_HEAD, "epoch": self.global_epoch,
                                  "phase_epoch": index + 1, "loss": trial.loss, "accuracy": trial.accuracy,
                                  "val_loss": trial.val_loss, "val_accuracy": trial.val_accuracy,
                                  "l2": trial.l2, "iterations": trial.iterations, "seconds": now - started})
            self.run.heartbeat(phase=PHASE_HEAD, epoch=self.global_epoch, phase_epoch=index + 1,
                               phase_epochs=total, step=0, steps=0,
                               message=f"Fitting the head exactly: L2 strength {trial.l2:g} ({index + 1}/{total})")
            return not self._stop_now()  # a stop keeps the best head fitted so far

        weights = self.sample_weights[train_y] if self.sample_weights is not None else None
        head, trials = fit_head(train_x, train_y, val_x, val_y, num_classes, epsilon=bn.epsilon,
                                sample_weight=weights, label_smoothing=self.config.label_smoothing,
                                on_trial=log_trial)
        write_linear_head(self.model, head.mean, head.variance, head.kernel, head.bias)
        best = next(t for t in trials if t.l2 == head.l2)
        self.run.log_metrics({"kind": "head_fit", "phase": PHASE_HEAD, "l2": head.l2,
                              "grid": [t.l2 for t in trials], "seconds": time.perf_counter() - started})
        self.epoch_ended(best.val_loss if best.val_loss is not None else best.loss)
        self.phase_ended()

    def _features(self, extract, images: np.ndarray) -> np.ndarray:
        """Pooled features in chunks, so a stop request or a heartbeat never waits for the whole pass."""
        batch = max(self.global_batch, 32)
        chunk = batch * 4
        total, parts = len(images), []
        for start in range(0, total, chunk):
            if self._stop_now():
                raise StopTraining()
            piece = np.ascontiguousarray(images[start:start + chunk])
            parts.append(extract.predict(piece, batch_size=batch, verbose=0))
            self.run.heartbeat(phase=PHASE_HEAD,
                               message=f"Computing frozen-base features {start + len(piece)}/{total}")
        return np.concatenate(parts).astype(np.float32)

    def _stop_now(self) -> bool:
        if self.run.stop_requested():
            self.stop_signalled = True
        return self.stop_signalled

    def _finetune(self, data: PreparedData, epochs: int) -> None:
        """Phase 2: unfreeze the top stages (BatchNorm stays frozen) and continue at a much lower rate."""
        from core.model import set_finetune_trainable

        set_finetune_trainable(self.model, self.config.unfreeze_stages)
        self._compile(self.model, self.config.finetune_lr)
        self._fit(self.model, PHASE_FINETUNE, epochs,
                  x=self._batches(data, "train", augment=True, shuffle=True),
                  validation_data=self._batches(data, "val", augment=False, shuffle=False),
                  images_per_step=self.global_batch)

    def _fit(self, model, phase: str, epochs: int, images_per_step: int, **fit_args) -> None:
        callbacks = [
            RunLogger(self, phase, epochs, images_per_step),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.config.early_stopping_patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                              patience=self.config.reduce_lr_patience, min_lr=1e-7),
        ]
        model.fit(epochs=epochs, callbacks=callbacks, verbose=0, **fit_args)
        self.phase_ended()
        self.save_each_improvement = True

    # ----------------------------------------------------------------------------- checkpoints
    def epoch_ended(self, val_loss: float | None) -> None:
        """Track the best model of the whole run (either phase); save it at once in slow phases, so a killed
        trainer still leaves its best checkpoint, and at the phase end in the fast features phase."""
        if val_loss is not None and np.isfinite(val_loss) and val_loss < self.best_val_loss:
            self.best_val_loss = float(val_loss)
            self.unsaved_best = True
            if self.save_each_improvement:
                self._save_model(self.model)
                self.unsaved_best = False

    def phase_ended(self) -> None:
        """EarlyStopping has restored the phase's best weights; save them if they are the run's best."""
        if self.unsaved_best:
            self._save_model(self.model)
            self.unsaved_best = False

    def _save_model(self, model) -> None:
        """Save atomically: a reader never sees half a model.keras."""
        final = self.run.file(MODEL)
        temporary = self.run.file(".model.partial.keras")
        try:
            model.save(temporary)
            os.replace(temporary, final)
        except BaseException:  # e.g. disk full: the previous best model.keras stays as it was
            temporary.unlink(missing_ok=True)
            raise

    # ----------------------------------------------------------------------------- evaluation
    def _final_evaluation(self, data: PreparedData) -> dict[str, Any]:
        """Evaluate the saved best model (exactly what the UI and CLI will load) on test, else val."""
        from core.evaluate import evaluate_images

        part = "test" if len(data.images["test"]) else "val"
        self.run.heartbeat(phase="evaluating", message=f"Evaluating on the {part} split")
        paths = [s.path for s in data.split[part]]
        report = evaluate_images(self.run, data.images[part], data.labels[part], paths, part,
                                 tta=self.config.tta)
        return report


class StopTraining(Exception):
    """Raised between chunks of work (outside keras.fit) when a stop was requested."""


class RunLogger(keras.callbacks.Callback):
    """Writes step and epoch lines, refreshes the heartbeat, and honours stop requests at the next batch."""

    def __init__(self, trainer: Trainer, phase: str, epochs: int, images_per_step: int):
        super().__init__()
        self.trainer, self.phase, self.epochs, self.images_per_step = trainer, phase, epochs, images_per_step
        self.last_beat = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()
        self.phase_epoch = epoch + 1
        self.trainer.global_epoch += 1
        # Always beat at an epoch start, so a watcher never shows the previous phase's epoch counter.
        self.trainer.run.heartbeat(phase=self.phase, epoch=self.trainer.global_epoch, phase_epoch=self.phase_epoch,
                                   phase_epochs=self.epochs, step=0, steps=self.params.get("steps") or 0,
                                   message="")

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        run, config = self.trainer.run, self.trainer.config
        steps = self.params.get("steps") or 0
        seen = (batch + 1) * self.images_per_step
        rate = seen / max(now - self.epoch_start, 1e-9)
        if (batch + 1) % config.log_every_steps == 0 or batch + 1 == steps:
            run.log_metrics({"kind": "step", "phase": self.phase, "epoch": self.trainer.global_epoch,
                             "phase_epoch": self.phase_epoch, "step": batch + 1, "steps": steps,
                             **_numbers(logs), "images_per_s": rate})
        if now - self.last_beat > 1.0:
            self.last_beat = now
            run.heartbeat(phase=self.phase, epoch=self.trainer.global_epoch, phase_epoch=self.phase_epoch,
                          phase_epochs=self.epochs, step=batch + 1, steps=steps, images_per_s=rate,
                          eta_seconds=self._eta(batch + 1, steps, now), message="")
        if run.stop_requested() or self.trainer.stop_signalled:
            self.trainer.stop_signalled = True
            self.model.stop_training = True

    def _eta(self, step: int, steps: int, now: float) -> float | None:
        if not steps:
            return None
        per_step = (now - self.epoch_start) / step
        left = steps - step + (self.epochs - self.phase_epoch) * steps
        if self.phase == PHASE_HEAD:  # fine-tuning steps cost ~3x a frozen step (backward through the base)
            left += self.trainer.plan.get(PHASE_FINETUNE, 0) * steps * 3
        return left * per_step

    def on_epoch_end(self, epoch, logs=None):
        logs = _numbers(logs)
        seconds = time.perf_counter() - self.epoch_start
        steps = self.params.get("steps") or 0
        lr = _learning_rate(self.model)
        self.trainer.run.log_metrics({"kind": "epoch", "phase": self.phase, "epoch": self.trainer.global_epoch,
                                      "phase_epoch": epoch + 1, **logs, "lr": lr, "seconds": seconds,
                                      "images_per_s": steps * self.images_per_step / max(seconds, 1e-9)})
        self.trainer.epoch_ended(logs.get("val_loss"))



def _numbers(logs: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v) or getattr(v, "shape", None) == ()}


def _learning_rate(model) -> float | None:
    try:
        return float(np.asarray(model.optimizer.learning_rate))
    except (TypeError, ValueError, AttributeError):
        return None


def run_training(config: TrainConfig, run: RunDir | None = None, models_dir: Path | None = None,
                 split: dict[str, list[Sample]] | None = None) -> RunDir:
    """Validate, create the run folder, train, evaluate. Status ends as succeeded, stopped or failed.

    `split` overrides the dataset's own split (the recipe benchmark holds out a fixed test set this way).
    """
    config.validate()
    try:
        dataset, default_split = prepare_dataset(config)
        split = split or default_split
    except StudioError as err:
        if run is not None:  # the UI made the folder already: record why it failed
            run.set_status("failed", error=str(err), finished=time.time())
        raise
    run = run or RunDir.create(models_dir)
    trainer = Trainer(config, run)
    previous = _install_stop_signal(trainer)
    run.set_status("running", pid=os.getpid(), started=time.time(), error=None)
    try:
        trainer.fit(dataset, split)
    except BaseException as err:
        message = str(err) if isinstance(err, StudioError) else f"{type(err).__name__}: {err}"
        run.set_status("failed", error=message, traceback=traceback.format_exc()[-4000:], finished=time.time())
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    final = "stopped" if trainer.stop_signalled else "succeeded"
    run.set_status(final, finished=time.time(), phase="done", message="", eta_seconds=0)
    return run


def _install_stop_signal(trainer: Trainer):
    """SIGTERM means 'stop at the next batch and keep the best model', same as the stop file."""

    def handler(signum, frame):
        trainer.stop_signalled = True

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. called from a test thread): rely on the stop file
        return signal.getsignal(signal.SIGTERM)
