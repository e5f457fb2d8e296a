"""The training recipe, top to bottom, and the trainer process that writes one run directory.

Recipe (keras.io "fine-tuning with EfficientNet"): a pretrained base, frozen; a new head trained at a high
rate; then the top stages unfrozen with BatchNorm kept frozen, at a ~100x lower rate. Early stopping with
the best weights restored, ReduceLROnPlateau, optional class weights and label smoothing.

A from-scratch backbone (the baseline CNN) has no pretrained base to freeze: the whole network, BatchNorm included,
trains over augmented images from the first epoch, with the same early stopping, schedule, loss and data; no
frozen-feature head fit, no fine-tuning (core.base.config.SCRATCH_DEFAULTS).

A run is a list of phases (core.base.progress): load the backbone, decode the images into the on-disk cache
(core.data.imagecache), compute frozen-base features, fit the head, fine-tune, save the best model, evaluate it. Each
phase reports done/total, a rate and an ETA into status.json and honours a stop request within a batch. A stop
keeps the best head or checkpoint already made, but a run stopped before its head was fitted saves no model, and
a stopped run is not evaluated (the stop is meant to be quick); such a model is kept but not offered by default.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from core import StudioError
from core.base import progress
from core.base.config import TrainConfig
from core.data.datasets import Dataset, Sample, split_to_json
from core.network.distribute import (Parallelism, any_process, cluster_from_env, data_parallel, leave_distribution,
                             prepare_devices)
from core.data.imagecache import ImageCache, StopRequested, default_cache_dir, max_cache_bytes, open_or_build, prune
from core.data.overrides import summary as overrides_summary
from core.base.runs import MODEL, OVERRIDES, RunDir, write_json_atomic

from core.training.plan import (PHASE_FINETUNE, PHASE_HEAD, PHASE_SCRATCH, evaluation_part, has_val_folder,
                                 prepare_dataset, split_for_recipe, training_plan)

CPU_INFERENCE_BATCH = 8
GPU_INFERENCE_BATCH = 256  # the last batch is padded to the full size (one trace): no need to go bigger
HARD_STOP_GRACE = 2.0  # seconds a stop may wait for the next check before a trainer with no head ends itself


@dataclass
class PreparedData:
    """The decoded split: on-disk image caches and labels for each part."""

    root: Path
    classes: list[str]
    split: dict[str, list[Sample]]
    images: dict[str, ImageCache]
    labels: dict[str, np.ndarray]


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

    def __init__(self, config: TrainConfig, run: RunDir, cache_dir: Path | None = None,
                 exit_on_stop: bool = False, on_progress: Callable[[dict[str, Any]], None] | None = None):
        self.config, self.run = config, run
        self.on_progress = on_progress  # also shown elsewhere, e.g. the command line's progress bars (core.terminal)
        self.exit_on_stop = exit_on_stop  # the trainer process may end itself on a stop with nothing to keep
        self.stop_seen_at: float | None = None
        self.cache_dir = Path(cache_dir or default_cache_dir(run.path.parent))
        self.stop_signalled = False  # a stop file or SIGTERM seen by this process
        self.stop_agreed = False  # several processes: a stop any of them saw, agreed at the same step by all
        # Hosted mode (core.training.hosting): a run past its wall-time limit stops like a Stop click, then is evaluated.
        from core.training.hosting import run_time_limit_seconds

        self.time_limit = run_time_limit_seconds()
        self.deadline = None if self.time_limit is None else time.monotonic() + self.time_limit
        self.time_limited = False
        self.final_evaluation = False
        self.parallel = Parallelism(None, 1, "single", [])
        self.best_val_loss = float("inf")
        self.unsaved_best = False
        self.save_each_improvement = True
        self.head_ready = False  # a model worth saving exists (a fitted head, or a validated epoch)
        # The model in memory is the one last saved (a head fit, then saved; nothing trained since): evaluation
        # scores it as it is instead of loading model.keras back (~2 s of a short run; tests prove both agree).
        self.memory_matches_saved = False
        self.stopped_in: str | None = None  # the phase a stop request ended
        self.global_epoch = 0
        # Held-out (confidence, correct) of the training photos from the cross-validated head fit: what Classify's
        # "unknown" threshold is chosen on when the run has no validation split it is not scored on.
        self.out_of_fold: tuple[np.ndarray, np.ndarray] | None = None
        self.tracker = progress.Tracker([], self._write_progress, self._stop_now, on_finish=self._log_phase)

    # ----------------------------------------------------------------------------- entry point
    def fit(self, dataset: Dataset, split: dict[str, list[Sample]]) -> dict[str, Any] | None:
        """Every phase in order; returns the evaluation, or None when a stop came first."""
        config = self.config
        finetune_epochs, split = self._set_up(dataset, split)
        self.tracker.phases = training_plan(config, {k: len(v) for k, v in split.items()}, finetune_epochs,
                                            self.cross_validated)
        data: PreparedData | None = None
        try:
            self._prepare_model(dataset)
            data = self._decode(dataset, split)
            with self.parallel.context():  # variables, optimizers and steps live on every replica
                if config.from_scratch:
                    self._train_from_scratch(data)
                else:
                    if config.head_epochs > 0:
                        self._train_head(data)
                    if finetune_epochs > 0 and not self._stop_now():
                        self._finetune(data, finetune_epochs)
        except StopRequested:
            self.stopped_in = self._current_phase()
        self._save_best()
        if self.parallel.multi_process:
            leave_distribution()  # the chief scores the saved model alone; the others are done
            if not self.parallel.is_chief:
                return None
        if self.time_limited and not self.stop_signalled and data is not None and self.head_ready:
            # The time limit ended training, not the visitor: score the model kept, as a finished run would be.
            self.final_evaluation, self.tracker.stopped = True, False
            self.run.log_metrics({"kind": "time_limit", "seconds": self.time_limit, "stopped_in": self.stopped_in})
            try:
                return self._evaluate(data)
            except StopRequested:
                self.stopped_in = self._current_phase()
                return None
        if self._stop_now() or data is None:
            self.stopped_in = self.stopped_in or self._current_phase()
            return None
        if not self.head_ready:  # e.g. every validation loss was NaN: there is no model to evaluate or keep
            raise StudioError("Training ended without a usable model: no epoch reached a finite validation loss. "
                              "Try a lower learning rate, or check the images.")
        self.final_evaluation = True  # training is over: a time limit reached now no longer cuts anything short
        try:
            return self._evaluate(data)
        except StopRequested:
            self.stopped_in = self._current_phase()
            return None

    def _current_phase(self) -> str | None:
        return self.tracker.current.name if self.tracker.current is not None else None

    def stop_without_model(self) -> None:
        """On the ticker thread: a stop was asked, no head exists yet (so nothing could be kept), and the main
        thread has not reached its next stop check within HARD_STOP_GRACE s (it is inside one long call, such as
        building the backbone or compiling the first step). End the trainer process now, saying so."""
        if not self.exit_on_stop or self.parallel.multi_process or self.head_ready or not self._stop_now():
            return
        now = time.monotonic()
        self.stop_seen_at = self.stop_seen_at or now
        if now - self.stop_seen_at < HARD_STOP_GRACE:
            return
        with self.tracker.lock:  # no other status write can come after this one
            self.tracker.ticker_closed = True
            self.run.set_status("stopped", finished=time.time(), phase="done", message="", eta_seconds=0,
                                fraction=1.0, stopped_in=self._current_phase())
            print(self.run.path, flush=True)
            pass_the_slot()
            os._exit(0)

    def _set_up(self, dataset: Dataset, split: dict[str, list[Sample]]) -> tuple[int, dict[str, list[Sample]]]:
        """Device, precision, parallelism; config.json, classes.json and split.json. Returns fine-tune epochs and
        the split as the recipe uses it (split_for_recipe)."""
        from core.data.augment import build_pipeline, check_output_size, resolve_spec
        from core.base.backbones import activation_ratio
        from core.network.device import (choose_batch_size, detect_device, learning_rate_scale, loader_workers,
                                         precision_policy, use_xla, xla_note)

        config = self.config
        prepare_devices()
        keras.utils.set_random_seed(config.seed)
        device = detect_device()
        policy = precision_policy(config.mixed_precision, device)
        keras.config.set_dtype_policy(policy)
        self.parallel = data_parallel(config.data_parallel)
        replicas = self.parallel.replicas
        self.jit = use_xla(config.xla, device, self.parallel.kind)
        self.compiles_slowly = self.jit or device.accelerator == "gpu"  # the first steps compile (XLA, kernels)
        self.size = config.resolved_image_size
        finetune_epochs = config.resolved_finetune_epochs(device.accelerator)
        if config.head_epochs == 0 and finetune_epochs == 0:
            raise StudioError(f"Nothing to train: head_epochs is 0 and fine-tuning on a {device.accelerator.upper()} "
                              "is 0 epochs by default; set head_epochs above 0 or finetune_epochs explicitly.")
        split = split_for_recipe(dataset, split, needs_validation=config.head_mode != "features" or finetune_epochs > 0)
        # batch_size is per device (auto: from the device's memory, the backbone and the number of training
        # photos); learning rates were chosen at a global batch of 32 and grow with it (learning_rate_scale), warmed
        # up over the first epoch.
        self.per_device_batch = config.batch_size or choose_batch_size(
            device, self.size, policy, activation_ratio(config.backbone), len(split["train"]), replicas)
        self.global_batch = self.per_device_batch * replicas
        self.workers = loader_workers(device)
        # Inference (features, evaluation) in small batches on a CPU: measured the same images/s at 8 as at 32
        # (Lite0, 288 px) and ~400 MB less peak memory, which is what lets trainer and server share a 2.7 GB box.
        self.inference_batch = min(self.global_batch, GPU_INFERENCE_BATCH) if device.accelerator == "gpu" \
            else CPU_INFERENCE_BATCH * replicas
        processes = self.parallel.process_count  # several processes split every batch evenly
        self.inference_batch = max(processes, self.inference_batch - self.inference_batch % processes)
        self.lr_scale = learning_rate_scale(self.global_batch, config.optimizer)
        spec = resolve_spec(config.augmentation)
        check_output_size(spec, self.size)
        # The head's L2: chosen on the user's own val/ folder when there is one, else by k-fold cross-validation
        # over the training photos (a carved share, when kept, is only scored, never chosen on).
        self.cross_validated = not has_val_folder(dataset)
        self.run.write_classes(dataset.classes)
        self.run.write_split(split_to_json(dataset.root, dataset.classes, split, config.seed,
                                           "folders" if dataset.report.layout == "split_folders" else "random"))
        self.run.write_config({**config.to_dict(), "augmentation": spec,
                               "resolved": {"image_size": self.size, "classes": dataset.classes,
                                            "finetune_epochs": finetune_epochs,
                                            "device": device.to_dict(), "precision": policy, "xla": self.jit,
                                            "xla_note": xla_note(config.xla, device, self.parallel.kind),
                                            "parallel": {"kind": self.parallel.kind, "replicas": replicas,
                                                         "devices": self.parallel.devices,
                                                         "per_device_batch": self.per_device_batch,
                                                         "loader_workers": self.workers,
                                                         "global_batch": self.global_batch,
                                                         "learning_rate_scale": self.lr_scale,
                                                         "learning_rate_rule": LEARNING_RATE_RULE,
                                                         "processes": self.parallel.process_count},
                                            "counts": {k: len(v) for k, v in split.items()},
                                            "cache_dir": str(self.cache_dir),
                                            **recipe_record(config, finetune_epochs, self.lr_scale)},
                               "versions": library_versions()})
        self.augment = build_pipeline(spec, seed=config.seed) if spec else None
        self._keep_estimate(device.accelerator, split)
        return finetune_epochs, split

    def _keep_estimate(self, accelerator: str, split: dict[str, list[Sample]]) -> None:
        """The time this run was expected to take, as the Train page showed it before Start, kept in the run
        folder to compare with what it took (core.training.estimate)."""
        from core.training.estimate import estimate_run, write_estimate

        counts = {part: len(samples) for part, samples in split.items()}
        try:
            write_estimate(self.run, estimate_run(self.config, counts, accelerator, self.run.path.parent,
                                                  cross_validated=self.cross_validated))
        except OSError:
            pass  # an estimate is a courtesy: a run never fails for want of one

    def _write_progress(self, fields: dict[str, Any]) -> None:
        self.run.heartbeat(**fields)
        if self.on_progress is not None:
            self.on_progress(fields)

    def _log_phase(self, phase: progress.Phase) -> None:
        """One metrics line per finished phase: its time and rate (read by `bench scale` and people)."""
        seconds = (phase.ended or 0.0) - (phase.started or 0.0)
        self.run.log_metrics({"kind": "phase", "phase": phase.name, "seconds": seconds, "done": phase.done,
                              "unit": phase.unit, "rate": phase.done / seconds if seconds > 0 else None})

    # ----------------------------------------------------------------------------- phases
    def _prepare_model(self, dataset: Dataset) -> None:
        """Phase: build the backbone (Lite0's weights are converted on first use) and the classifier."""
        from core.base.backbones import create_backbone
        from core.network.model import build_classifier, with_mid_level_features

        config = self.config
        self.tracker.start(progress.PREPARE)
        with self.parallel.context():
            base = create_backbone(config.backbone, self.size, config.weights)
            if config.multi_level:
                base = with_mid_level_features(base)
            # Several TensorFlow replicas: the head's BatchNorm takes its statistics over the global batch, as one
            # device (and JAX's data parallelism) would; per-replica statistics made 2 devices train unlike 1.
            self.model = build_classifier(base, len(dataset.classes), config.dropout,
                                          synchronized_batchnorm=self.parallel.kind == "mirrored")
        self.tracker.finish(progress.PREPARE)
        if self._stop_now():
            raise StopRequested()

    def _decode(self, dataset: Dataset, split: dict[str, list[Sample]]) -> PreparedData:
        """Phase: each part decoded once into the on-disk cache (reused by later runs on the same images)."""
        images, labels = {}, {}
        self.tracker.start(progress.DECODE)
        done_before = 0
        for part in ("train", "val", "test"):
            samples = split.get(part, [])
            paths = [dataset.root / s.path for s in samples]

            def report(done: int, _: int, offset: int = done_before) -> None:
                self._advance_or_stop(offset + done)  # also when the cache is reused and nothing is decoded

            images[part], _ = open_or_build(paths, self.size, self.cache_dir, self.config.threads, report,
                                            should_stop=self._stop_now, prune_after=False)
            labels[part] = np.asarray([s.label for s in samples], dtype=np.int64)
            done_before += len(samples)
        # Keep the folder within its budget, never dropping a part this run reads.
        prune(self.cache_dir, max_cache_bytes(), keep=[c.path for c in images.values()])
        self.tracker.finish(progress.DECODE)
        self.sample_weights = class_weight_vector(labels["train"], len(dataset.classes)) \
            if self.config.class_weights else None
        return PreparedData(dataset.root, dataset.classes, split, images, labels)

    def _batches(self, data: PreparedData, part: str, augment: bool, shuffle: bool):
        from core.data.loader import ImageBatches

        return ImageBatches(data.images[part], data.labels[part], len(data.classes), self.global_batch,
                            augment=self.augment if augment else None, shuffle=shuffle,
                            seed=self.config.seed + self.global_epoch, threads=self.config.threads,
                            class_weights=self.sample_weights if part == "train" else None,
                            shard=(self.parallel.process_index, self.parallel.process_count),
                            workers=self.workers, max_queue_size=2 * self.workers)

    def _compile(self, model, learning_rate: float) -> None:
        model.compile(optimizer=make_optimizer(self.config.optimizer, learning_rate * self.lr_scale),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=self.config.label_smoothing),
                      metrics=["accuracy"], jit_compile=self.jit)

    def _train_head(self, data: PreparedData) -> None:
        """Phase 1: the base frozen; only the new head learns, at a high rate."""
        from core.network.model import base_of

        base_of(self.model).trainable = False
        if self.config.head_mode == "features":
            # The frozen base gives the same features every epoch, so compute them once and fit the head on the
            # vectors exactly (core.network.headfit): seconds instead of epochs, and measured better than Adam with early
            # stopping. Mirrored training copies were measured to add nothing to this fit, so they are skipped.
            train_x, val_x = self._features(data, with_val=not self.cross_validated)
            self._fit_head_on_features(train_x, data.labels["train"], val_x, data.labels["val"], len(data.classes))
        else:
            self._compile(self.model, self.config.head_lr)
            self._fit(self.model, PHASE_HEAD, self.config.head_epochs,
                      x=self._batches(data, "train", augment=True, shuffle=True),
                      validation_data=self._batches(data, "val", augment=False, shuffle=False),
                      images_per_step=self.global_batch)

    def _train_from_scratch(self, data: PreparedData) -> None:
        """The one phase of a from-scratch backbone: every layer trainable from the first epoch (BatchNorm too, so it
        learns this data's statistics), epochs over augmented images at head_lr, early stopping and ReduceLROnPlateau
        as in every epoch phase."""
        self.model.trainable = True
        self._compile(self.model, self.config.head_lr)
        self._fit(self.model, PHASE_SCRATCH, self.config.head_epochs,
                  x=self._batches(data, "train", augment=True, shuffle=True),
                  validation_data=self._batches(data, "val", augment=False, shuffle=False),
                  images_per_step=self.global_batch)

    def _features(self, data: PreparedData, with_val: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Phase: pooled frozen-base features of train (and val when the fit chooses on it), a batch at a time
        from the disk cache."""
        from core.network.model import feature_extractor, predict_in_batches

        extract = feature_extractor(self.model)
        train, val = data.images["train"], data.images["val"]
        with_val = with_val and len(val) > 0
        self.tracker.start(progress.FEATURES)
        start = time.perf_counter()
        batch = self.inference_batch
        train_x = predict_in_batches(extract, train, batch, on_batch=self._inference_batch_done,
                                     parallel=self.parallel)
        val_x = predict_in_batches(extract, val, batch, on_batch=self._inference_batch_done, offset=len(train),
                                   parallel=self.parallel) if with_val else None
        elapsed = time.perf_counter() - start
        self.tracker.finish(progress.FEATURES)
        n_images = len(train) + (len(val) if with_val else 0)
        self.run.log_metrics({"kind": "features", "phase": PHASE_HEAD, "images": n_images,
                              "seconds": elapsed, "images_per_s": n_images / max(elapsed, 1e-9)})
        return train_x, val_x  # float32 (N, D), filled in place by predict_in_batches

    def _advance_or_stop(self, done: int) -> None:
        if not self.tracker.advance(done):
            raise StopRequested()

    def _inference_batch_done(self, done: int) -> None:
        """After each batch of a pass every process makes (so a stop is agreed there)."""
        self.sync_stop()
        self._advance_or_stop(done)

    def _fit_head_on_features(self, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray | None,
                              val_y: np.ndarray, num_classes: int) -> None:
        """Phase: fit the head for each L2 strength of the grid (logged like epochs), write the best into the
        model. A stop between or within fits keeps the best head fitted so far; a stop before the first fit
        ends leaves no head."""
        from core.network.headfit import CV_FOLDS, RECIPE_SCALING, fit_head, fit_head_cv, single_threaded_blas
        from core.network.model import feature_blocks, write_linear_head

        bn = self.model.get_layer("head_bn")
        started = time.perf_counter()
        self.tracker.start(progress.HEAD_FIT)

        def log_trial(trial, index: int, total: int) -> bool:
            self.global_epoch += 1
            self.run.log_metrics({"kind": "epoch", "phase": PHASE_HEAD, "epoch": self.global_epoch,
                                  "phase_epoch": index + 1, "loss": trial.loss, "accuracy": trial.accuracy,
                                  "val_loss": trial.val_loss, "val_accuracy": trial.val_accuracy,
                                  "l2": trial.l2, "scaling": trial.scaling, "iterations": trial.iterations,
                                  "selection_loss": trial.selection_loss,
                                  "cross_validated": self.cross_validated,
                                  "seconds": time.perf_counter() - started})
            return self.tracker.advance(index + 1, message=f"L2 strength {trial.l2:g} fitted ({trial.scaling})")

        def on_iteration(index: int, fraction: float) -> bool:
            return self.tracker.advance(index + fraction)

        weights = self.sample_weights[train_y] if self.sample_weights is not None else None
        # Each pooled stage may be scaled as one block (core.network.headfit.scaling_variance); the fit chooses
        # the scaling with L2 (RECIPE_SCALING) and its variance is written into head_bn.
        scaling = {"scaling": RECIPE_SCALING, "blocks": feature_blocks(self.model)}
        out_of_fold: dict[float, np.ndarray] = {}
        with single_threaded_blas():
            if self.cross_validated:
                head, trials = fit_head_cv(train_x, train_y, num_classes, epsilon=bn.epsilon, sample_weight=weights,
                                           label_smoothing=self.config.label_smoothing, seed=self.config.seed,
                                           on_trial=log_trial, on_iteration=on_iteration, out_of_fold=out_of_fold,
                                           **scaling)
            else:
                head, trials = fit_head(train_x, train_y, val_x, val_y, num_classes, epsilon=bn.epsilon,
                                        sample_weight=weights, label_smoothing=self.config.label_smoothing,
                                        on_trial=log_trial, on_iteration=on_iteration, **scaling)
        self.tracker.finish(progress.HEAD_FIT)
        if head is None:  # stopped inside the first fit
            raise StopRequested()
        weights = (head.mean, head.variance, head.kernel, head.bias)
        if self.parallel.multi_process:  # identical replicas: every process takes the chief's head
            from jax.experimental import multihost_utils

            weights = tuple(np.asarray(w) for w in multihost_utils.broadcast_one_to_all(weights))
        write_linear_head(self.model, *weights)
        self.head_ready = True
        if head.l2 in out_of_fold:  # rows no fold held out (one fold of a very large set) are all zeros
            probs = out_of_fold[head.l2]
            seen = probs.sum(axis=1) > 0
            self.out_of_fold = (probs[seen].max(axis=1), probs[seen].argmax(axis=1) == train_y[seen])
        best = next(t for t in trials if t.l2 == head.l2 and t.scaling == head.scaling)
        self.run.log_metrics({"kind": "head_fit", "phase": PHASE_HEAD, "l2": head.l2,
                              "grid": list(dict.fromkeys(t.l2 for t in trials)),
                              "seconds": time.perf_counter() - started,
                              "chosen_by": f"{CV_FOLDS}-fold cross-validation" if self.cross_validated
                              else "the validation folder", "photos": int(len(train_y)),
                              "scaling": head.scaling, "scalings_tried": sorted({t.scaling for t in trials}),
                              "blocks": list(scaling["blocks"])})
        self.save_each_improvement = False  # saved once in the save phase (or before fine-tuning)
        self.epoch_ended(best.val_loss if best.val_loss is not None else best.loss)
        self.save_each_improvement = True
        if self._stop_now():  # the grid was cut short: the best head so far is kept, nothing more runs
            raise StopRequested()

    def _stop_now(self) -> bool:
        """Whether to stop. One process: a stop file or SIGTERM seen now. Several: only the stop they agreed on at
        the last `sync_stop`, so that no process leaves a step the others are still in."""
        if self.run.stop_requested():
            self.stop_signalled = True
        if self._past_deadline():
            self.time_limited = True
        local = self.stop_signalled or (self.time_limited and not self.final_evaluation)
        return self.stop_agreed if self.parallel.multi_process else local

    def _past_deadline(self) -> bool:
        """Hosted mode: training has run past its wall-time limit (the final evaluation is never cut short)."""
        return self.deadline is not None and not self.final_evaluation and time.monotonic() > self.deadline

    def sync_stop(self) -> None:
        """Several processes: agree on a stop any of them saw. Called at the same step on every process (batch
        ends), never from the ticker thread."""
        if self.parallel.multi_process and not self.stop_agreed:
            if self.run.stop_requested():
                self.stop_signalled = True
            if self._past_deadline():
                self.time_limited = True
            self.stop_agreed = any_process(self.stop_signalled or self.time_limited, self.parallel)

    @property
    def stopped(self) -> bool:
        return self.stop_agreed if self.parallel.multi_process else (self.stop_signalled or self.time_limited)

    def _finetune(self, data: PreparedData, epochs: int) -> None:
        """Phase 2: unfreeze the top stages (BatchNorm stays frozen) and continue at a much lower rate."""
        from core.network.model import set_finetune_trainable

        self.phase_ended()  # the head's model is the run's best until fine-tuning beats it
        set_finetune_trainable(self.model, self.config.unfreeze_stages)
        if self.config.head_mode == "features":
            # The fitted head's BatchNorm is its standardiser, with the scaling the fit chose (headfit.RECIPE_SCALING).
            # Left trainable it would normalise each batch per feature, which is not what the kernel was fitted on;
            # frozen, Keras 3 runs it in inference mode, with the fitted statistics.
            self.model.get_layer("head_bn").trainable = False
        self._compile(self.model, self.config.finetune_lr)
        if self.config.head_mode == "features" and self.head_ready:
            self._score_head_like_an_epoch(data)
        self._fit(self.model, PHASE_FINETUNE, epochs,
                  x=self._batches(data, "train", augment=True, shuffle=True),
                  validation_data=self._batches(data, "val", augment=False, shuffle=False),
                  images_per_step=self.global_batch)

    def _score_head_like_an_epoch(self, data: PreparedData) -> None:
        """The fitted head's loss on the validation photos with the loss fine-tuning is scored by (label smoothing
        included), as the run's best so far. The head was chosen by its out-of-fold loss over the training photos:
        compared with that number, no fine-tuning epoch's validation loss could ever win (with label smoothing 0.1
        it sits higher whatever the model), and Best kept the head every time while paying for the epochs."""
        scored = self.model.evaluate(self._batches(data, "val", augment=False, shuffle=False), verbose=0,
                                     return_dict=True)
        self.best_val_loss = float(scored["loss"])
        self.run.log_metrics({"kind": "head_on_validation", "phase": PHASE_HEAD, "val_loss": self.best_val_loss,
                              "val_accuracy": float(scored.get("accuracy", float("nan")))})

    def _fit(self, model, phase: str, epochs: int, images_per_step: int, **fit_args) -> None:
        callbacks = [
            # first: the epoch's line (RunLogger) and ReduceLROnPlateau see the rate the warm-up reached
            *([WarmUp(1.0 / self.lr_scale)] if self.lr_scale > 1 else []),
            RunLogger(self, phase, epochs, images_per_step, len(fit_args["x"].images),
                      len(fit_args["validation_data"].images)),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.config.early_stopping_patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                              patience=self.config.reduce_lr_patience, min_lr=1e-7),
        ]
        self.tracker.start(phase)
        if self._stop_now():  # compiling the first step can take a while: don't start it for nothing
            raise StopRequested()
        # shuffle=False: the loader shuffles its rows itself, seeded (core.data.loader); Keras' own shuffling of the
        # batch order draws on Python's global random state, so the same seed gave other batches on other paths.
        model.fit(epochs=epochs, callbacks=callbacks, verbose=0, shuffle=False, **fit_args)
        self.sync_stop()
        self.tracker.finish(phase)
        self.phase_ended()
        if self._stop_now():
            raise StopRequested()

    # ----------------------------------------------------------------------------- checkpoints
    def epoch_ended(self, val_loss: float | None) -> None:
        """Track the best model of the whole run (either phase); save it at once in slow phases, so a killed
        trainer still leaves its best checkpoint."""
        self.memory_matches_saved = False  # new weights in memory: not what is on disk until saved below
        if val_loss is not None and np.isfinite(val_loss) and val_loss < self.best_val_loss:
            self.best_val_loss = float(val_loss)
            self.unsaved_best = True
            self.head_ready = True
            if self.save_each_improvement:
                self._save_model(self.model)
                self.unsaved_best = False

    def phase_ended(self) -> None:
        """EarlyStopping has restored the phase's best weights; save them if they are the run's best."""
        if self.unsaved_best:
            self._save_model(self.model)
            self.unsaved_best = False

    def _save_best(self) -> None:
        """Phase: write the best model not yet on disk; nothing when no head was ever fitted."""
        if not self.head_ready:
            return
        self.tracker.start(progress.SAVE)
        self.phase_ended()
        self.tracker.finish(progress.SAVE)

    def _save_model(self, model) -> None:
        """Save atomically: a reader never sees half a model.keras. With several processes every one saves (saving
        reads the replicated variables, a step all processes take together); the others into their scratch folder."""
        from core.network.model import portable_batchnorm

        final = self.run.file(MODEL)
        temporary = self.run.file(".model.partial.keras")
        try:
            with portable_batchnorm(model):  # the saved file loads on every backend
                model.save(temporary)
            os.replace(temporary, final)
            self.memory_matches_saved = model is self.model
        except BaseException:  # e.g. disk full: the previous best model.keras stays as it was
            temporary.unlink(missing_ok=True)
            raise

    # ----------------------------------------------------------------------------- evaluation
    def _evaluate(self, data: PreparedData) -> dict[str, Any]:
        """Phase: evaluate the saved best model (exactly what the UI and CLI will load) on test, else val; then
        choose Classify's "unknown" threshold on held-out photos that are not the test split."""
        from core.results.evaluate import evaluate_images, held_out_for_threshold, load_run_model

        part = evaluation_part(data.split)
        source = held_out_for_threshold(data.split, part, self.out_of_fold is not None)
        extra_pass = len(data.split["val"]) if source == "validation" and part != "val" else 0
        self.tracker.phase(progress.EVALUATE).total += extra_pass  # the validation photos are scored too
        self.tracker.start(progress.EVALUATE, message=f"on the {part} split")
        paths = [s.path for s in data.split[part]]
        in_memory = self.model if self.memory_matches_saved and not self.parallel.multi_process else None
        model = in_memory or load_run_model(self.run)
        report = evaluate_images(self.run, data.images[part], data.labels[part], paths, part, model=model,
                                 tta=self.config.tta, batch_size=self.inference_batch,
                                 on_batch=self._advance_or_stop)
        self._choose_unknown_threshold(data, part, source, report, model)
        self.tracker.finish(progress.EVALUATE)
        return report

    def _choose_unknown_threshold(self, data: PreparedData, part: str, source: str | None, report: dict[str, Any],
                                  model) -> None:
        """calibration.json from the validation photos (scored now unless they were the evaluated split) or the
        head fit's out-of-fold predictions (core.results.evaluate.held_out_for_threshold says which)."""
        from core.results.evaluate import choose_unknown_threshold, score_images

        if source == "out_of_fold":
            confidence, correct = self.out_of_fold
        elif source == "validation" and part == "val":
            table = report["predictions"]
            confidence = np.asarray(table["confidence"])
            correct = np.asarray(table["true"]) == np.asarray(table["predicted"])
        elif source == "validation":
            done = len(data.split[part])
            probs = score_images(model, data.images["val"], self.inference_batch, tta=self.config.tta,
                                 on_batch=lambda n: self._advance_or_stop(done + n))
            confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == data.labels["val"]
        else:
            return
        choose_unknown_threshold(self.run, confidence, correct, source)


class RunLogger(keras.callbacks.Callback):
    """Writes step and epoch lines, reports progress, and honours stop requests at the next batch."""

    def __init__(self, trainer: Trainer, phase: str, epochs: int, images_per_step: int, train_images: int,
                 val_images: int):
        super().__init__()
        self.trainer, self.phase, self.epochs, self.images_per_step = trainer, phase, epochs, images_per_step
        self.train_images, self.val_images = train_images, val_images

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()
        self.phase_epoch = epoch + 1
        self.trainer.global_epoch += 1
        if not self._report(0, force=True, message=COMPILING if epoch == 0 and self.trainer.compiles_slowly else ""):
            self.model.stop_training = True

    def _report(self, images_this_epoch: int, force: bool = False, message: str = "", step: int = 0) -> bool:
        """Progress in images: the epochs before this one, then this epoch's training and validation images."""
        done = (self.phase_epoch - 1) * (self.train_images + self.val_images) + images_this_epoch
        fields = {"epoch": self.trainer.global_epoch, "phase_epoch": self.phase_epoch, "phase_epochs": self.epochs,
                  "step": step, "steps": self.params.get("steps") or 0, "message": message}
        return self.trainer.tracker.advance(done, force=force, **fields)

    def on_train_batch_end(self, batch, logs=None):
        self.trainer.sync_stop()
        steps = self.params.get("steps") or 0
        now = time.perf_counter()
        seen = min((batch + 1) * self.images_per_step, self.train_images)
        if (batch + 1) % self.trainer.config.log_every_steps == 0 or batch + 1 == steps:
            self.trainer.run.log_metrics({"kind": "step", "phase": self.phase, "epoch": self.trainer.global_epoch,
                                          "phase_epoch": self.phase_epoch, "step": batch + 1, "steps": steps,
                                          **_numbers(logs), "lr": _learning_rate(self.model),
                                          "images_per_s": seen / max(now - self.epoch_start, 1e-9)})
        if not self._report(seen, step=batch + 1):
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        self.validation_started = time.monotonic()

    def on_test_batch_end(self, batch, logs=None):
        """Validation at an epoch's end: counted in the bar, and a stop ends it too."""
        if batch == 0 and self.phase_epoch == 1 and self.trainer.tracker.current is not None:
            # The first validation batch of a phase traces the validation step: a one-time cost, not the rate.
            self.trainer.tracker.current.one_time_seconds += time.monotonic() - self.validation_started
        self.trainer.sync_stop()
        checked = min((batch + 1) * self.images_per_step, self.val_images)
        if not self._report(self.train_images + checked, message="validating", step=self.params.get("steps") or 0):
            self.model.stop_training = True
            self.model.stop_evaluating = True

    def on_epoch_end(self, epoch, logs=None):
        if self.trainer.tracker.stopped:  # an epoch cut short by a stop is no point for the curves, no score
            return
        logs = _numbers(logs)
        seconds = time.perf_counter() - self.epoch_start
        steps = self.params.get("steps") or 0
        lr = _learning_rate(self.model)
        self.trainer.run.log_metrics({"kind": "epoch", "phase": self.phase, "epoch": self.trainer.global_epoch,
                                      "phase_epoch": epoch + 1, **logs, "lr": lr, "seconds": seconds,
                                      "images_per_s": steps * self.images_per_step / max(seconds, 1e-9)})
        self.trainer.epoch_ended(logs.get("val_loss"))


LEARNING_RATE_RULE = ("rates chosen at a global batch of 32; above it, x sqrt(batch / 32) for Adam, x batch / 32 "
                      "for SGD, reached linearly over each phase's first epoch")
# The first epoch's note while its first steps compile: XLA, and on a GPU the CUDA kernels (on an H100/H200 this
# TensorFlow build JIT-compiles them from PTX: minutes the first time, then from the driver's cache, core/__init__).
COMPILING = "compiling the training step (first steps are slow; kept in a cache for later runs)"


class WarmUp(keras.callbacks.Callback):
    """The phase's learning rate rises linearly from `start_fraction` of it to all of it over the first epoch
    (Goyal et al. 2017): a rate scaled up for a large batch, taken at full size from the first step, can undo the
    fitted head before the gradients settle. The rate is the optimizer's own, so ReduceLROnPlateau works after."""

    def __init__(self, start_fraction: float):
        super().__init__()
        self.start_fraction = start_fraction
        self.target = 0.0
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self.target = float(np.asarray(self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 0:
            steps = max(int(self.params.get("steps") or 1), 1)
            share = self.start_fraction + (1 - self.start_fraction) * batch / steps
            self.model.optimizer.learning_rate = self.target * share

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.model.optimizer.learning_rate = self.target


def make_optimizer(name: str, learning_rate: float):
    """The gradient optimizer of the epoch phases: Adam, or SGD with momentum (config.optimizer)."""
    from core.base.config import SGD_MOMENTUM

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=SGD_MOMENTUM)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    raise StudioError(f"Unknown optimizer {name!r}: choose 'adam' or 'sgd'.")


def recipe_record(config: TrainConfig, finetune_epochs: int, lr_scale: float = 1.0) -> dict[str, Any]:
    """What config.json's `resolved` says about the recipe that ran: transfer or from scratch, the weights, what
    trained, and the gradient optimizer with the phases that used it (none when the head was only fitted exactly)."""
    from core.base.config import SGD_MOMENTUM

    optimizer: dict[str, Any] = {"name": config.optimizer}
    if config.optimizer == "sgd":
        optimizer["momentum"] = SGD_MOMENTUM
    if config.from_scratch:
        optimizer.update(phases=[PHASE_SCRATCH], learning_rate=config.head_lr * lr_scale)
        return {"recipe": "from scratch", "weights": None, "head_mode": "images",
                "trainable": "every layer, from random initialisation, from the first epoch", "optimizer": optimizer}
    phases = ([PHASE_HEAD] if config.head_epochs > 0 and config.head_mode == "images" else []) + \
        ([PHASE_FINETUNE] if finetune_epochs > 0 else [])
    optimizer["phases"] = phases
    if not phases:
        optimizer["note"] = "not used: the head was fitted exactly on frozen features, with no gradient optimizer"
    trainable = "the head on the frozen base" + (f", then the top {config.unfreeze_stages} stages (BatchNorm frozen)"
                                                  if finetune_epochs > 0 else "")
    return {"recipe": "transfer", "weights": config.weights, "head_mode": config.head_mode, "trainable": trainable,
            "optimizer": optimizer}


def _numbers(logs: dict | None) -> dict[str, float]:
    return {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v) or getattr(v, "shape", None) == ()}


def _learning_rate(model) -> float | None:
    try:
        return float(np.asarray(model.optimizer.learning_rate))
    except (TypeError, ValueError, AttributeError):
        return None


def run_training(config: TrainConfig, run: RunDir | None = None, models_dir: Path | None = None,
                 split: dict[str, list[Sample]] | None = None, cache_dir: Path | None = None,
                 exit_on_stop: bool = False,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> RunDir | None:
    """Validate, create the run folder, train, evaluate. Status ends as succeeded, stopped or failed.

    `split` overrides the dataset's own split (the recipe benchmark holds out a fixed test set this way);
    `cache_dir` holds decoded images (default: `.cache` beside the run folders). `exit_on_stop` (the trainer
    process of `python -m core train`) lets a stop with nothing to keep end the process at once. A process other than the first of a
    multi-process run (core.network.distribute) trains its share, writes nothing and returns None.
    `on_progress` gets every progress record written into status.json (the first process's only).
    """
    config.validate()
    if run is not None:  # the app's queued run: say what the trainer is doing before its first phase
        run.heartbeat(message="Checking the dataset", pid=os.getpid())
    try:
        from core.training.hosting import check_training_limits

        check_training_limits(config)  # hosted mode: a run over a visitor's limits never starts
        dataset, default_split, applied = prepare_dataset(config)
        split = split or default_split
    except StudioError as err:
        if run is not None:  # the UI made the folder already: record why it failed
            run.set_status("failed", error=str(err), finished=time.time())
            pass_the_slot()
        raise
    cluster = cluster_from_env()
    if cluster is not None and cluster.process_id > 0:
        # Not the chief of several processes: it computes, but the chief writes the run folder; this one keeps
        # its status, metrics and decoded images in a scratch folder of its own, removed when it ends.
        scratch = Path(tempfile.mkdtemp(prefix=f"studio-process-{cluster.process_id}-"))
        try:
            trainer = Trainer(config, RunDir.create(scratch), scratch / ".cache")
            _install_stop_signal(trainer)
            trainer.fit(dataset, split)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return None
    run = run or RunDir.create(models_dir)
    if applied.file is not None:  # the corrections this run trained with, as they were when it started
        write_json_atomic(run.file(OVERRIDES), overrides_summary(applied))
    trainer = Trainer(config, run, cache_dir, exit_on_stop=exit_on_stop, on_progress=on_progress)
    previous = _install_stop_signal(trainer)
    run.set_status("running", pid=os.getpid(), started=time.time(), error=None)
    try:
        with progress.Ticker(trainer.tracker, on_tick=trainer.stop_without_model):
            trainer.fit(dataset, split)
    except BaseException as err:
        message = str(err) if isinstance(err, StudioError) else f"{type(err).__name__}: {err}"
        run.set_status("failed", error=message, traceback=traceback.format_exc()[-4000:], finished=time.time())
        pass_the_slot()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    final = "stopped" if trainer.stopped else "succeeded"
    message = (f"Stopped at this demo's {trainer.time_limit / 60:g}-minute limit for one run; its best model was "
               "kept" + (" and evaluated." if run.file("evaluation.json").is_file() else ".")) \
        if trainer.time_limited and not trainer.stop_signalled else ""
    run.set_status(final, finished=time.time(), phase="done", message=message, eta_seconds=0, fraction=1.0,
                   stopped_in=trainer.stopped_in if trainer.stopped else None,
                   stop_reason="time_limit" if trainer.time_limited and not trainer.stop_signalled else None)
    pass_the_slot()
    return run


def pass_the_slot() -> None:
    """A trainer started from the app's queue (core.training.jobs) starts the next waiting run as it ends, so the queue moves
    even when no page is open. Never fails the run that is ending."""
    queue = os.environ.get("STUDIO_QUEUE_DIR")
    if not queue:
        return
    from core.training import jobs

    try:
        jobs.dispatch(Path(queue))
    except Exception as err:  # the next page that looks will start it instead
        print(f"could not start the next queued run: {err}", flush=True)


def _install_stop_signal(trainer: Trainer):
    """SIGTERM means 'stop at the next batch and keep the best model', same as the stop file."""

    def handler(signum, frame):
        trainer.stop_signalled = True

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread (e.g. called from a test thread): rely on the stop file
        return signal.getsignal(signal.SIGTERM)
