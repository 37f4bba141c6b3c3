"""Training data loading that is deterministic and resumable, with or without workers.

Augmentation randomness depends only on (seed, epoch, sample index): each sample is
transformed under its own seeded RNG, so results do not depend on the number of workers, and
a run resumed mid-epoch sees exactly the samples and augmentations it would have seen.
"""

from __future__ import annotations

import hashlib
import signal
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .dataset import DetectionDataset, Sample, collate_detections
from .records import DataIssue


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class SeededDataset(Dataset):
    """Wraps a ``DetectionDataset`` so each item is produced under its own seeded RNG.

    Items are ``(sample or None, issues)``: the :class:`DataIssue` warnings that producing
    the sample raised, as text. DataLoader workers are separate processes whose warnings
    would print there, once per epoch; carried in the batch, the training process prints
    each once per run.
    """

    def __init__(self, base: DetectionDataset, seed: int) -> None:
        self.base = base
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):  # AugmentedDataset: close_mosaic
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Sample | None, list[str]]:
        # fork_rng restores the caller's global RNG afterwards: the main process's stream
        # (dropout / drop-path in the model) is untouched when num_workers == 0.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataIssue)  # every time: the trainer dedupes
            torch.manual_seed(_sample_seed(self.seed, self.epoch, index))
            sample = self.base[index]
        issues = []
        for w in caught:
            if issubclass(w.category, DataIssue):
                issues.append(str(w.message))
            else:  # not ours to reroute: warn as if never caught
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        return sample, issues


def collate_training(items: list[tuple[Sample | None, list[str]]]) -> dict[str, Any]:
    """:func:`collate_detections` of the samples, plus ``"skipped"`` (how many were None:
    unreadable images) and ``"issues"`` (the data warnings producing them raised)."""
    batch = collate_detections([sample for sample, _ in items])
    batch["skipped"] = sum(sample is None for sample, _ in items)
    batch["issues"] = [issue for _, issues in items for issue in issues]
    return batch


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (also for a single process) that can start mid-epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def skip(self, num_samples: int) -> None:
        """Skip this many of this rank's samples at the start of the current epoch."""
        self.start = num_samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start :]
        self.start = 0  # only the first (resumed) epoch is shortened
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples - self.start


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGINT and SIGTERM leave the worker running.

    Ctrl-C, ``timeout``, ``kill -- -PGID``, systemd and Slurm signal every process of the
    run, the workers too; torch's worker handler dies of a SIGTERM that is not its parent's,
    and the training process then fails fetching the next batch, unsaved. The training
    process decides when to stop (engine/stopping.py); its workers end with its loader.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_train_loader(
    dataset: DetectionDataset,
    batch_size: int,
    workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[DataLoader, SeededDataset, ResumableSampler]:
    """A shuffling loader of uint8 images ``[B, 3, S, S]``, box/label lists, the skipped count
    and data issues (:func:`collate_training`)."""
    seeded = SeededDataset(dataset, seed)
    sampler = ResumableSampler(seeded, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    # Dropping the last incomplete batch keeps BN statistics sane, unless the data set is
    # smaller than a batch (a few-image fine-tune or overfit test).
    drop_last = sampler.num_samples >= batch_size
    loader = DataLoader(
        seeded,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_training,
        drop_last=drop_last,
        pin_memory=pin_memory,
        # its own generator: creating an iterator must not consume the global RNG stream
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals,
    )
    return loader, seeded, sampler
