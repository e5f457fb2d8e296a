"""Experiment pairs (issue 20): two runs that differ in one setting, trained one after the other on the same split
and seed, so that Compare can say what that one setting buys.

A pair is started from one training config: `pair_configs` makes the two (run A goes without what the setting is
meant to show, run B with it, so Compare's differences, B minus A, are what it buys), `start_pair` starts A and
queues B behind it (core.training.jobs), and each run's folder gets a small `pair.json` naming its pair, its role
and its partner. Nothing else records a pair, so deleting a run deletes its half, and `find_pairs` rebuilds every
pair from the run folders alone. A pair can be compared only when both runs trained to the end; one that failed,
was stopped or is gone leaves the pair unfinished, said in words.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core import StudioError
from core.base.backbones import BACKBONES, DEFAULT_BACKBONE
from core.base.config import TrainConfig
from core.base.runs import RUN_ID, RunDir, list_runs, read_json, write_json_atomic
from core.training import jobs

PAIR_FILE = "pair.json"  # in each run folder of a pair
BASELINE = "baseline_cnn"  # the from-scratch backbone of core.base.backbones
ROLES = ("a", "b")
NO_AUGMENTATION = ("none", "", None)
PRETRAINED_ONLY = ("weights", "head_mode", "finetune_epochs")  # what a from-scratch backbone refuses other values of


@dataclass(frozen=True)
class PairKind:
    """One experiment a pair can run: the setting that differs, and each run's value of it and name for it.

    Run A goes without what the setting is meant to show (from scratch, no augmentation, the smaller photos) and run
    B with it, so that core.results.compare's differences (B minus A) are what the setting buys."""

    name: str
    title: str                                      # "pretrained vs from scratch"
    setting: str                                    # the TrainConfig field that differs
    labels: tuple[str, str]                         # run A's and run B's name for their value
    explanation: str                                # one sentence for the Train page
    values: Callable[[TrainConfig], tuple[Any, Any]]  # run A's and run B's value, from the chosen settings


def _pretrained(config: TrainConfig) -> str:
    """The chosen EfficientNet, or the default one when the chosen backbone is the baseline itself."""
    return config.backbone if config.backbone != BASELINE else DEFAULT_BACKBONE


def _augmented(config: TrainConfig) -> Any:
    """The chosen augmentation, or the light preset when none was chosen (else both runs would be alike)."""
    chosen = config.augmentation
    return "light" if chosen in NO_AUGMENTATION or chosen == [] else chosen


PAIR_KINDS: dict[str, PairKind] = {k.name: k for k in [
    PairKind("transfer", "pretrained vs from scratch", "backbone", ("from scratch", "pretrained"),
             "The chosen EfficientNet (EfficientNet-Lite0 when the baseline itself is chosen) with its ImageNet weights "
             "against a small CNN that learns from random weights on these photos alone: what transfer learning "
             "buys.",
             lambda c: (BASELINE, _pretrained(c))),
    PairKind("augmentation", "augmentation vs none", "augmentation", ("no augmentation", "augmentation"),
             "The augmentation chosen on the Augment page (the light preset if none was) against the photos as "
             "they are: whether augmenting helps on this dataset.",
             lambda c: ("none", _augmented(c))),
    PairKind("resolution", "224 vs 288 px", "image_size", ("224 px", "288 px"),
             "The same network at 224 and at 288 pixels a side: whether the larger photos are worth their time.",
             lambda c: (224, 288)),
]}


def available_kinds() -> list[PairKind]:
    """The pair kinds this install can run (pretrained vs from scratch needs the baseline backbone)."""
    return [k for k in PAIR_KINDS.values() if k.name != "transfer" or BASELINE in BACKBONES]


def get_kind(name: str) -> PairKind:
    if name not in PAIR_KINDS:
        raise StudioError(f"Unknown experiment pair {name!r}; choose one of: {', '.join(PAIR_KINDS)}.")
    return PAIR_KINDS[name]


def pair_configs(kind: PairKind, config: TrainConfig) -> tuple[TrainConfig, TrainConfig]:
    """Run A's and run B's configs: `config` with the pair's one setting set to each run's value, everything else
    (data, split fractions, seed, epochs) shared. Checked here, before any run exists. A backbone brings the
    settings it implies (TrainConfig.with_backbone: a from-scratch one trains whole over images, without weights)."""
    first_value, second_value = kind.values(config)
    if kind.setting == "backbone":  # the settings a backbone implies follow it (a from-scratch one has no features)
        first, second = for_backbone(config, first_value), for_backbone(config, second_value)
    else:
        first = dataclasses.replace(config, **{kind.setting: first_value})
        second = dataclasses.replace(config, **{kind.setting: second_value})
    if kind.name == "augmentation" and config.head_mode == "features" and config.finetune_epochs == 0:
        raise StudioError("Augmentation acts only on photos the network trains on, and with 0 fine-tune epochs the "
                          "head is fitted on features of the photos as they are, so both runs would come out the "
                          "same. Set 'Fine-tune epochs' to 1 or more for this pair.")
    for made in (first, second):
        made.validate()
    return first, second


def for_backbone(config: TrainConfig, backbone: str) -> TrainConfig:
    """`config` for another backbone (TrainConfig.with_backbone), where a from-scratch backbone also takes its own
    weights, head mode and fine-tuning whatever the pretrained recipe had: fine-tuning epochs chosen for an
    EfficientNet mean nothing for a network that trains whole from the first epoch. Anything else set by hand (its
    epochs, patience) is kept; left at the default, it takes the new backbone's."""
    from core.base.config import backbone_defaults

    forced = {key: value for key, value in backbone_defaults(backbone).items() if key in PRETRAINED_ONLY}
    return dataclasses.replace(config, **forced).with_backbone(backbone)


def run_name(number: int, label: str, base: str = "") -> str:
    """'pair 3: pretrained', after the name the person gave, if any."""
    name = f"pair {number}: {label}"
    return f"{base.strip()} · {name}" if base.strip() else name


# ----------------------------------------------------------------------------------------- the record
def read_record(run: RunDir) -> dict[str, Any] | None:
    """The run's pair.json when it holds what start_pair writes; None when there is none or it is damaged (a
    damaged record only drops the run from its pair, it never breaks a page)."""
    try:
        record = read_json(run.file(PAIR_FILE), None)
    except (ValueError, OSError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    number, role, partner = record.get("pair"), record.get("role"), record.get("partner")
    ok = (isinstance(number, int) and not isinstance(number, bool) and number > 0 and role in ROLES
          and isinstance(partner, str) and RUN_ID.fullmatch(partner) is not None
          and record.get("kind") in PAIR_KINDS and isinstance(record.get("label"), str))
    return record if ok else None


@dataclass(frozen=True)
class Pair:
    """Two runs of one experiment; a member is None when its folder is gone."""

    number: int
    kind: PairKind
    first: RunDir | None
    second: RunDir | None
    first_id: str
    second_id: str
    created: float

    @property
    def title(self) -> str:
        return f"Pair {self.number}: {self.kind.title}"

    def members(self) -> list[tuple[str, str, RunDir | None]]:
        """(A or B, label, run) of both runs."""
        return [("A", self.kind.labels[0], self.first), ("B", self.kind.labels[1], self.second)]

    def run_ids(self) -> tuple[str, str]:
        return self.first_id, self.second_id


def find_pairs(models_dir: Path) -> list[Pair]:
    """Every pair whose runs (or one of them) are in `models_dir`, newest first."""
    runs = {run.run_id: run for run in list_runs(models_dir)}
    found: dict[tuple[int, str, str], dict[str, Any]] = {}
    for run in runs.values():
        record = read_record(run)
        if record is None:
            continue
        ids = (run.run_id, record["partner"]) if record["role"] == "a" else (record["partner"], run.run_id)
        entry = found.setdefault((record["pair"], *ids), {"kind": record["kind"], "created": 0.0})
        created = record.get("created")
        entry["created"] = max(entry["created"], float(created) if isinstance(created, (int, float)) else 0.0)
    pairs = []
    for (number, first_id, second_id), entry in found.items():
        first, second = runs.get(first_id), runs.get(second_id)
        # Two runs are a pair when their records name each other; a partner that is gone leaves the pair listed
        # (unfinished), but one whose record is damaged or names another run (a copied or edited pair.json) means
        # there is no pair here.
        if (first is not None and not _agrees(first, number, "a", second_id)) or \
                (second is not None and not _agrees(second, number, "b", first_id)):
            continue
        pairs.append(Pair(number, PAIR_KINDS[entry["kind"]], first, second, first_id, second_id, entry["created"]))
    return sorted(pairs, key=lambda p: (p.number, p.created), reverse=True)


def _agrees(run: RunDir, number: int, role: str, partner: str) -> bool:
    record = read_record(run)
    return record is not None and (record["pair"], record["role"], record["partner"]) == (number, role, partner)


def next_number(models_dir: Path) -> int:
    """One more than the highest pair number in the folder (1 for the first pair)."""
    return max((p.number for p in find_pairs(models_dir)), default=0) + 1


def find_pair(models_dir: Path, number: int) -> Pair | None:
    return next((p for p in find_pairs(models_dir) if p.number == number), None)


# ----------------------------------------------------------------------------------------- starting and stopping
def start_pair(kind_name: str, config: TrainConfig, models_dir: Path, base_name: str = "",
               lock_dir: Path | None = None) -> Pair:
    """Start run A now (or queue it, when the slot is taken) and queue run B right behind it, both from `config`
    with the pair's setting changed; each run folder records the pair. Every check (settings, a hosted demo's
    limits) is made for both runs before either starts, so a pair is started whole or not at all."""
    from core.training.hosting import check_training_limits

    kind = get_kind(kind_name)
    first_config, second_config = pair_configs(kind, config)
    for made in (first_config, second_config):
        check_training_limits(made)
    models_dir = Path(models_dir)
    number = next_number(models_dir)
    first = jobs.start_training(first_config, models_dir, run_name(number, kind.labels[0], base_name),
                                lock_dir=lock_dir)
    try:
        second = jobs.start_training(second_config, models_dir, run_name(number, kind.labels[1], base_name),
                                     lock_dir=lock_dir, after_own=True)
    except StudioError as err:
        jobs.stop(first)  # half a pair compares with nothing: it is not left training
        raise StudioError(f"The pair could not be started: {err} Run {first.run_id} was stopped.") from None
    created = time.time()
    for run, role, partner, label in ((first, "a", second, kind.labels[0]), (second, "b", first, kind.labels[1])):
        write_json_atomic(run.file(PAIR_FILE), {"pair": number, "kind": kind.name, "role": role, "label": label,
                                                "setting": kind.setting, "partner": partner.run_id,
                                                "created": created})
    return Pair(number, kind, first, second, first.run_id, second.run_id, created)


def stop_pair(pair: Pair) -> None:
    """Stop both runs: the one training keeps its best model, the one waiting leaves the queue."""
    for _, _, run in pair.members():
        if run is not None:
            jobs.stop(run)


# ----------------------------------------------------------------------------------------- where a pair stands
@dataclass(frozen=True)
class PairState:
    """Where a pair stands: 'training' (a run is queued or training), 'ready' (both finished: compare them) or
    'unfinished' (a run failed, was stopped, lost its evaluation or is gone: the pair cannot be compared)."""

    state: str
    sentence: str
    views: tuple[jobs.RunView | None, jobs.RunView | None]

    @property
    def comparable(self) -> bool:
        return self.state == "ready"

    @property
    def active(self) -> bool:
        return self.state == "training"


def _evaluated(run: RunDir) -> bool:
    try:
        return bool(run.read_evaluation())
    except (ValueError, OSError):
        return False


def pair_state(pair: Pair) -> PairState:
    """The pair's state from both run folders (core.training.jobs.run_view), with one sentence saying it."""
    views = tuple(jobs.run_view(run) if run is not None else None for _, _, run in pair.members())
    problems, training = [], []
    for (role, label, run), view, run_id in zip(pair.members(), views, pair.run_ids()):
        name = f"run {role} ({label})"
        if run is None or view is None:
            problems.append(f"{name}, {run_id}, is no longer in this workspace")
        elif view.active:
            doing = {"stopping": "is stopping", "queued": "is starting"}.get(view.state,
                                                                                            "is training")
            training.append(f"{name} {'is waiting for the training slot' if view.queue is not None else doing}")
        elif view.state == "failed":
            problems.append(f"{name} failed")
        elif view.state == "stopped":
            problems.append(f"{name} was stopped before it finished")
        elif not _evaluated(run):
            problems.append(f"{name} has no evaluation")
    if problems:
        still = f" ({'; '.join(training)}: stop it with Stop the pair, or let it finish on its own)" if training else ""
        return PairState("unfinished", f"{pair.title} cannot be compared: {'; '.join(problems)}{still}. A comparison "
                                       "needs both runs trained to the end on the same photos; start the pair "
                                       "again.", views)
    if training:
        return PairState("training", f"{pair.title}: {'; '.join(training)}.", views)
    return PairState("ready", f"{pair.title}: both runs finished; compare them.", views)


def run_to_follow(pair: Pair, state: PairState) -> RunDir | None:
    """The member the Train page should show: the one training (or next to train), else run A."""
    for (_, _, run), view in zip(pair.members(), state.views):
        if run is not None and view is not None and view.active and view.queue is None:
            return run
    for (_, _, run), view in zip(pair.members(), state.views):
        if run is not None and view is not None and view.active:
            return run
    return pair.first or pair.second


def newest_comparable(models_dir: Path) -> Pair | None:
    """The newest pair whose two runs both finished (what Compare opens on)."""
    return next((p for p in find_pairs(models_dir) if pair_state(p).comparable), None)
